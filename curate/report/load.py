"""Read what `curate report` draws: runs, scores, manifests and shard tables, as small pandas frames.

Embeddings are never read (only key, shard, caption, similarity, status), and images only for the few
samples a contact sheet shows, each from the one tar that holds it. Every file is read through its
artefact's own reader (run folder: `curate.train.run`; manifest: `curate.select.manifest`; score folder:
`curate.score.schema.ScoreFolder`). The report is local-only: a URL is refused in one line.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from curate.cost import Lineage, cost_at_steps, lineage
from curate.errors import CurateError, first_line
from curate.fileio import is_local, local_path
from curate.score.schema import is_score_file, open_score_folder
from curate.select.config import GLOBAL_METHODS
from curate.select.manifest import (
    MANIFEST_FILE,
    SUMMARY_FILE,
    holds_manifest,
    manifest_metadata,
    read_manifest,
    read_summary,
)
from curate.shards import ReadStats, iter_members
from curate.shards.paths import expand_shards
from curate.shards.schema import IMAGE_EXTENSIONS
from curate.train.config import TrainConfig
from curate.train.run import METRICS_FILE, read_batches, read_config, read_metrics

SCORE_COLUMNS = ["key", "shard", "caption", "similarity", "status"]


def classify(paths: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """Sort folders given on the command line into runs, manifests and score folders, by what they hold."""
    kinds: dict[str, list[str]] = {"run": [], "manifest": [], "scores": []}
    for path in paths:
        kinds[detect_kind(path)].append(str(path))
    return kinds["run"], kinds["manifest"], kinds["scores"]


def detect_kind(path: str | Path) -> str:
    """`run`, `manifest` or `scores`, by what the folder holds; anything else is a one-line error."""
    folder = local_path(path, "report input")
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
    if holds_manifest(folder):  # manifest.parquet or its parts
        return "manifest"
    parquets = sorted(folder.glob("*.parquet"))
    if parquets and is_score_file(parquets[0]):
        return "scores"
    raise CurateError(
        f"{path} is not a run ({METRICS_FILE}), a manifest ({MANIFEST_FILE}) or a score folder "
        "(*.parquet written by curate score)"
    )


# ---------------------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class RunSelection:
    """How a run's data was selected: its manifest's method, criterion and filter ratio F (or online's)."""

    method: str  # select's --method (jest, independent, clipscore, ...) or "online jest"
    criterion: str | None  # None for a global filter, which has none
    ratio: float

    @property
    def label(self) -> str:
        return self.method + (f" ({self.criterion})" if self.criterion else "")


@dataclass
class Run:
    name: str  # the folder's name: the label in every plot and table
    config: TrainConfig | None  # None without config.json
    logs: pd.DataFrame  # one row per log step: step, loss, flops, ... (flat numeric columns)
    evals: pd.DataFrame  # one row per eval: step, its own flops and seconds there, metric columns
    trained_keys: list[str] | None  # batches.parquet's keys, one per trained sample (None without it)
    lineage: Lineage  # its own cost and everything upstream (curate.cost)
    selection: RunSelection | None = None  # None: all data, or a manifest no longer there

    @property
    def trained_on_manifest(self) -> bool:
        return bool(self.config and self.config.data.manifest)


def read_run(path: str | Path) -> Run:
    folder = local_path(path, "run")
    if folder.name == METRICS_FILE:
        folder = folder.parent
    logs, evals = [], []
    for record in read_metrics(folder):
        step = int(record["step"])
        if isinstance(record.get("eval"), dict):
            evals.append({"step": step, **_numbers(record["eval"])})
        else:
            logs.append({"step": step, **_numbers(record)})
    if not logs and not evals:
        raise CurateError(f"{folder / METRICS_FILE} is empty: the run has not logged a step yet")
    log_frame = _by_step(pd.DataFrame(logs, columns=["step"] if not logs else None))
    eval_frame = _by_step(pd.DataFrame(evals, columns=["step"] if not evals else None))
    if len(eval_frame) and len(log_frame):
        # The run's own cost at each eval step, interpolated between its log lines.
        eval_frame["flops"], eval_frame["seconds"] = cost_at_steps(folder, eval_frame["step"].to_numpy())
    batches = read_batches(folder)
    keys = batches.column("key").to_pylist() if batches is not None else None
    config = read_config(folder)
    return Run(folder.name, config, log_frame, eval_frame, keys, lineage(folder), run_selection(config))


def run_selection(config: TrainConfig | None) -> RunSelection | None:
    """The selection a run trained on, from its manifest's summary.json parameters (the manifest's own
    metadata where there is no summary), or its online JEST settings."""
    if config is None:
        return None
    if config.online is not None:
        return RunSelection("online jest", config.online.criterion, config.online.ratio)
    if not config.data.manifest or not is_local(config.data.manifest):
        return None
    folder = local_path(config.data.manifest, "manifest")
    folder = folder.parent if folder.name == MANIFEST_FILE else folder
    if not holds_manifest(folder):
        return None
    try:
        parameters = read_summary(folder).get("parameters") or {}
    except CurateError:
        parameters = {}
    if not parameters:
        metadata = manifest_metadata(folder)
        parameters = {k: metadata.get(f"curate.{k}") for k in ("method", "criterion", "ratio")}
    try:
        ratio = float(parameters["ratio"])
    except (KeyError, TypeError, ValueError):
        return None
    method = str(parameters.get("method"))
    # A global filter records select's default criterion, which it never used.
    criterion = None if method in GLOBAL_METHODS else parameters.get("criterion")
    return RunSelection(method, criterion, ratio)


def _numbers(record: dict) -> dict:
    return {
        k: float(v)
        for k, v in record.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def _by_step(frame: pd.DataFrame) -> pd.DataFrame:
    # A resumed run may have re-logged a step; the last record of a step wins.
    return frame.drop_duplicates("step", keep="last").sort_values("step", ignore_index=True)


# ---------------------------------------------------------------------------------------------- scores


def read_scores(path: str | Path) -> pd.DataFrame:
    """key, shard, caption, similarity, status of every score file in the folder (no embeddings)."""
    return open_score_folder(path, "--scores").read_columns(SCORE_COLUMNS).to_pandas()


def score_model(path: str | Path) -> str:
    meta = open_score_folder(path, "--scores").metadata
    return f"{meta.model}" + (f" ({meta.pretrained})" if meta.pretrained else "")


# ---------------------------------------------------------------------------------------------- manifests


@dataclass
class Manifest:
    name: str
    rows: pd.DataFrame  # the manifest's rows: key, shard, batch, super_batch, chunk, score
    summary: dict  # summary.json, or {} when absent or unreadable
    metadata: dict[str, str]

    def recorded_input(self, name: str) -> str | None:
        """Where `curate select` read its scores or shards, when recorded and still there."""
        inputs = self.summary.get("inputs") if isinstance(self.summary.get("inputs"), dict) else {}
        path = inputs.get(name) or (self.metadata.get("curate.shards") if name == "shards" else None)
        if not isinstance(path, str) or not is_local(path):
            return None
        return path if local_path(path, name).is_dir() else None


def read_manifest_folder(path: str | Path) -> Manifest:
    folder = local_path(path, "--manifest")
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


def shard_tables(shards: str | Sequence[str], option: str = "--shards") -> list[Path]:
    """The img2dataset table (`NNNNN.parquet`) beside each shard of a folder, tar paths or a brace pattern
    (a run's recorded data), for the shards that have one."""
    tars = expand_shards([shards] if isinstance(shards, str) else list(shards))
    tables = [local_path(tar.removesuffix(".tar") + ".parquet", option) for tar in tars]
    return [table for table in tables if table.is_file()]


def read_shard_columns(tables: Sequence[Path], columns: Sequence[str]) -> pd.DataFrame:
    """Those of `columns` that every table has, indexed by key (its first row where a key repeats): each
    file read once, for all the columns the report wants of it (captions, the synthetic `noise`)."""
    names = [set(pq.read_schema(table).names) for table in tables]
    present = [c for c in columns if c != "key" and names and all(c in n for n in names)]
    if not tables or not all("key" in n for n in names):
        return pd.DataFrame(columns=present, index=pd.Index([], name="key"))
    try:
        frame = pa.concat_tables(pq.read_table(t, columns=["key", *present]) for t in tables).to_pandas()
    except (OSError, pa.ArrowInvalid) as error:
        raise CurateError(f"cannot read the shard tables: {first_line(error)}") from None
    return frame.drop_duplicates("key").set_index("key")


def read_images(shards: str | Path, wanted: pd.DataFrame) -> dict[str, bytes]:
    """key -> image bytes for the rows of `wanted` (key, shard), reading only the tars that hold them."""
    images: dict[str, bytes] = {}
    stats = ReadStats()
    for shard, group in wanted.groupby("shard", sort=True):
        path = local_path(shards, "--shards") / str(shard)
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
