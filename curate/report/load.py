"""Read what `curate report` draws: runs, scores, manifests and shard tables, as small pandas frames.

Embeddings are never read (only key, shard, caption, similarity, status), and images only for the few
samples a contact sheet shows, each from the one tar that holds it.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import CurateError
from curate.score.schema import ScoreMetadata
from curate.select.manifest import MANIFEST_FILE, SUMMARY_FILE, manifest_metadata, read_manifest
from curate.shards import ReadStats, iter_members
from curate.shards.schema import IMAGE_EXTENSIONS

METRICS_FILE = "metrics.jsonl"
SCORE_COLUMNS = ["key", "shard", "caption", "similarity", "status"]


def detect_kind(path: str | Path) -> str:
    """`run`, `manifest` or `scores`, by what the folder holds; anything else is a one-line error."""
    folder = Path(path)
    if not folder.exists():
        raise CurateError(f"no such file or folder: {path}")
    if folder.is_file():
        if folder.name == MANIFEST_FILE:
            return "manifest"
        if folder.name == METRICS_FILE:
            return "run"
        raise CurateError(f"{path}: give the folder, not a file (a run, a manifest or a score folder)")
    if (folder / METRICS_FILE).is_file():
        return "run"
    if (folder / MANIFEST_FILE).is_file():
        return "manifest"
    parquets = sorted(folder.glob("*.parquet"))
    if parquets and _is_score_file(parquets[0]):
        return "scores"
    raise CurateError(
        f"{path} is not a run ({METRICS_FILE}), a manifest ({MANIFEST_FILE}) or a score folder "
        "(*.parquet written by curate score)"
    )


def _is_score_file(path: Path) -> bool:
    try:
        ScoreMetadata.read(path)
    except CurateError:
        return False
    return True


# ---------------------------------------------------------------------------------------------- runs


@dataclass
class Run:
    name: str  # the folder's name: the label in every plot and table
    config: dict  # config.json's "train" section ({} when absent)
    logs: pd.DataFrame  # one row per log step: step, loss, flops, ... (flat numeric columns)
    evals: pd.DataFrame  # one row per eval: step, flops (from the nearest log step), metric columns
    noise_selected: dict[str, float] = field(default_factory=dict)  # online JEST, mean over log windows

    @property
    def trained_on_manifest(self) -> bool:
        return bool(self.config.get("manifest"))


def read_run(path: str | Path) -> Run:
    folder = Path(path)
    if folder.name == METRICS_FILE:
        folder = folder.parent
    metrics = folder / METRICS_FILE
    if not metrics.is_file():
        raise CurateError(f"{path}: no {METRICS_FILE} (is it a run folder of curate train?)")
    config: dict = {}
    if (folder / "config.json").is_file():
        try:
            config = json.loads((folder / "config.json").read_text()).get("train", {})
        except (ValueError, AttributeError):
            raise CurateError(f"{folder / 'config.json'} is not valid JSON") from None
    logs, evals, noise = [], [], []
    for number, line in enumerate(metrics.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (ValueError, KeyError, TypeError):
            raise CurateError(f"{metrics}:{number} is not a metrics record (JSON with a step)") from None
        if isinstance(record.get("eval"), dict):
            evals.append({"step": step, **_numbers(record["eval"])})
        else:
            logs.append({"step": step, **_numbers(record)})
            if isinstance(record.get("noise_selected"), dict):
                noise.append(record["noise_selected"])
    if not logs and not evals:
        raise CurateError(f"{metrics} is empty: the run has not logged a step yet")
    log_frame = _by_step(pd.DataFrame(logs, columns=["step"] if not logs else None))
    eval_frame = _by_step(pd.DataFrame(evals, columns=["step"] if not evals else None))
    if "flops" in log_frame and len(eval_frame):
        # FLOPs grow linearly with the step: interpolate from the log lines onto the eval steps.
        per_step = (log_frame["flops"] / log_frame["step"]).iloc[-1]
        eval_frame["flops"] = eval_frame["step"] * per_step
    return Run(folder.name, config, log_frame, eval_frame, _mean_shares(noise))


def _numbers(record: dict) -> dict:
    return {
        k: float(v)
        for k, v in record.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def _by_step(frame: pd.DataFrame) -> pd.DataFrame:
    # A resumed run may have re-logged a step; the last record of a step wins.
    return frame.drop_duplicates("step", keep="last").sort_values("step", ignore_index=True)


def _mean_shares(windows: list[dict]) -> dict[str, float]:
    kinds = sorted({k for window in windows for k in window})
    return {k: sum(float(w.get(k, 0.0)) for w in windows) / len(windows) for k in kinds} if windows else {}


# ---------------------------------------------------------------------------------------------- scores


def read_scores(path: str | Path) -> pd.DataFrame:
    """key, shard, caption, similarity, status of every score file in the folder (no embeddings)."""
    folder = Path(path)
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        raise CurateError(f"--scores {path}: no score files (*.parquet written by curate score)")
    ScoreMetadata.read(files[0])  # a one-line error when the folder holds some other Parquet
    try:
        table = pa.concat_tables(pq.read_table(f, columns=SCORE_COLUMNS) for f in files)
    except (OSError, pa.ArrowInvalid, KeyError) as error:
        raise CurateError(f"cannot read scores in {path}: {str(error).splitlines()[0]}") from None
    return table.to_pandas()


def score_model(path: str | Path) -> str:
    meta = ScoreMetadata.read(sorted(Path(path).glob("*.parquet"))[0])
    return f"{meta.model}" + (f" ({meta.pretrained})" if meta.pretrained else "")


# ---------------------------------------------------------------------------------------------- manifests


@dataclass
class Manifest:
    name: str
    rows: pd.DataFrame  # key, shard, super_batch, chunk, score
    summary: dict  # summary.json, or {} when absent or unreadable
    metadata: dict[str, str]

    def recorded_input(self, name: str) -> str | None:
        """Where `curate select` read its scores or shards, when recorded and still there."""
        inputs = self.summary.get("inputs") if isinstance(self.summary.get("inputs"), dict) else {}
        path = inputs.get(name) or (self.metadata.get("curate.shards") if name == "shards" else None)
        return path if isinstance(path, str) and Path(path).is_dir() else None


def read_manifest_folder(path: str | Path) -> Manifest:
    folder = Path(path)
    folder = folder.parent if folder.is_file() else folder
    rows = read_manifest(folder).to_pandas()
    summary: dict = {}
    # summary.json is extra detail (per-super-batch scores, counts); the manifest alone draws the rest.
    with contextlib.suppress(OSError, ValueError):
        summary = json.loads((folder / SUMMARY_FILE).read_text())
    if not isinstance(summary, dict):
        summary = {}
    return Manifest(folder.name, rows, summary, manifest_metadata(folder))


def super_batch_scores(summary: dict) -> pd.DataFrame | None:
    """Per-super-batch criterion score of the selected batch and of a random batch, if the summary has it."""
    results = summary.get("super_batch_results")
    if not isinstance(results, list):
        return None
    frame = pd.DataFrame([r for r in results if isinstance(r, dict)])
    needed = {"super_batch", "selected_score", "random_score"}
    return frame[sorted(needed)].dropna() if needed <= set(frame.columns) and len(frame) else None


# ---------------------------------------------------------------------------------------------- shards


def read_noise(shards: str | Path) -> pd.Series | None:
    """key -> noise kind from the shards' img2dataset tables, when they carry a `noise` column (synth)."""
    files = sorted(Path(shards).glob("*.parquet"))
    parts = []
    for file in files:
        names = pq.read_schema(file).names
        if "noise" not in names or "key" not in names:
            return None
        parts.append(pq.read_table(file, columns=["key", "noise"]))
    if not parts:
        return None
    table = pa.concat_tables(parts).to_pandas()
    return table.drop_duplicates("key").set_index("key")["noise"].fillna("unknown")


def read_images(shards: str | Path, wanted: pd.DataFrame) -> dict[str, bytes]:
    """key -> image bytes for the rows of `wanted` (key, shard), reading only the tars that hold them."""
    images: dict[str, bytes] = {}
    stats = ReadStats()
    for shard, group in wanted.groupby("shard", sort=True):
        path = Path(shards) / str(shard)
        if not path.is_file():
            continue
        keys = set(group["key"])
        for key, members in iter_members(str(path), stats):
            if key in keys:
                ext = next((e for e in IMAGE_EXTENSIONS if e in members), None)
                if ext:
                    images[key] = members[ext]
                keys.discard(key)
                if not keys:
                    break
    return images
