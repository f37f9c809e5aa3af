"""Run folders (docs/reference/formats.md, "Runs"), defined once for the trainer, `curate report`,
the examples and the tests: its file names, its records, and the one writer and one reader of each.

    RUN/config.json            {"train": TrainConfig.as_dict(), "model_config": the model's open_clip config}
    RUN/metrics.jsonl          a LogRecord per log step and an EvalRecord per eval, in step order
    RUN/batches.parquet        step int64, key string: the keys each step trained on (offline, online or not)
    RUN/checkpoints/step_N.pt  after N steps (checkpoint.py); RUN/latest.pt, the newest, always complete

`step` in metrics.jsonl and in a checkpoint counts the steps done (1..S); `step` in batches.parquet is the
0-based step that trained on the key (0..S-1), as a manifest numbers its batches. So a checkpoint of step N
goes with the batch rows of steps < N and the metrics records of steps <= N.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from curate.errors import CurateError
from curate.fileio import atomic_open, read_json_object, read_table_with_schema, writing
from curate.train.config import TrainConfig

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
BATCHES_FILE = "batches.parquet"
LATEST_FILE = "latest.pt"
CHECKPOINTS_DIR = "checkpoints"

BATCHES_SCHEMA = pa.schema([pa.field("step", pa.int64()), pa.field("key", pa.string())])


def checkpoint_path(run: Path, step: int) -> Path:
    return run / CHECKPOINTS_DIR / f"step_{step}.pt"


# ---------------------------------------------------------------------------------------------- config


def write_config(run: Path, config: TrainConfig, model_config: dict) -> None:
    with atomic_open(str(run / CONFIG_FILE), "w") as handle:
        json.dump({"train": config.as_dict(), "model_config": model_config}, handle, indent=2)


def read_config(run: Path) -> TrainConfig | None:
    """The run's settings, or None when it has no config.json; a config.json that does not parse as this
    version's settings is a one-line error."""
    path = run / CONFIG_FILE
    if not path.is_file():
        return None
    return TrainConfig.from_dict(read_json_object(str(path), "a curate train config").get("train"))


# ---------------------------------------------------------------------------------------------- metrics


class _LogFields(TypedDict):
    step: int  # steps done
    loss: float  # mean SigLIP loss over the window
    lr: float  # the last step's learning rate
    samples_per_s: float  # since this session's first step (decoding excluded)
    logit_scale: float  # t
    logit_bias: float  # b
    # cumulative training FLOPs (online JEST: with the learner's scoring forwards), each forward counted at
    # the resolution it ran at (--multi-resolution, --score-resolution)
    flops: float
    # cumulative wall seconds of the run, across resumes: loading, decoding and steps; evaluation left out
    seconds: float


class LogRecord(_LogFields, total=False):
    """One line per log step; the window is the steps since the previous log line."""

    # Online JEST only: mean A_ij over the b x b pairs of the chosen batch and of a random batch of the same
    # size from the same super-batch (the units of select's summary.json), averaged over the window.
    selected_learnability: float
    random_learnability: float
    # --false-negatives mask:T: the share of those batches' off-diagonal pairs the mask zeroed
    selected_masked_share: float
    random_masked_share: float
    # "score", "exchange" (the global scope over several processes: gathering the embeddings and keys,
    # moving the chosen pairs) and "train": shares of the window's time
    time_share: dict[str, float]
    # the global scope over several processes: chosen pairs sent to the process that trains them, a step
    exchanged_pairs: float
    # --order batches only: how many times the manifest's batches had started over at the window's last
    # step (0 in the first pass through them)
    epoch: int


class EvalRecord(TypedDict):
    step: int
    eval: dict[str, Any]  # curate.evaluate's numbers: zeroshot_top1, image_to_text_r1, ..., images


class MetricsWriter:
    """Appends records to metrics.jsonl, one flushed line each, so a reader never waits for the run to end."""

    def __init__(self, run: Path):
        self._path = run / METRICS_FILE
        self._handle = open(self._path, "a", encoding="utf-8")  # noqa: SIM115 - closed by __exit__

    def write(self, record: LogRecord | EvalRecord) -> None:
        with writing(self._path):
            self._handle.write(json.dumps(record) + "\n")
            self._handle.flush()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


def read_metrics(run: Path) -> list[LogRecord | EvalRecord]:
    """Every record in metrics.jsonl. A torn last line (a run killed mid-write) is dropped; a bad line
    anywhere else is a one-line error naming it."""
    return [record for _, record in _metrics_lines(run / METRICS_FILE)]


def truncate_metrics(run: Path, step: int) -> None:
    """Keep the records of steps <= `step`, byte for byte, so a resumed run's log reads as one run."""
    path = run / METRICS_FILE
    if path.exists():
        kept = [line for line, record in _metrics_lines(path) if record["step"] <= step]
        with atomic_open(str(path), "w") as handle:
            handle.write("".join(line + "\n" for line in kept))


def _metrics_lines(path: Path) -> list[tuple[str, dict]]:
    if not path.is_file():
        raise CurateError(f"no {path} (is it a run folder of curate train?)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise CurateError(f"{path} is not UTF-8 text (byte {error.start}): not a metrics log") from None
    lines = text.splitlines()
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            int(record["step"])
        except (ValueError, KeyError, TypeError):
            # Each record is one write ending in a newline, so only a kill mid-write leaves a last line
            # without one.
            if number == len(lines) and not text.endswith("\n"):
                break
            raise CurateError(f"{path}:{number} is not a metrics record (JSON with a step)") from None
        out.append((line, record))
    return out


# ---------------------------------------------------------------------------------------------- batches


class BatchLog:
    """The keys each step trained on, kept in memory and written whole (atomically) at each checkpoint,
    by rank 0, which merges the other ranks' parts of each step in first (`pop_new`, `merge`),
    so batches.parquet always matches a checkpoint and a killed run never leaves half of it. It costs a
    few tens of bytes a trained sample in memory (about 10 MB for 200k) and rewrites the whole file at
    each checkpoint."""

    def __init__(self, kept: pa.Table | None = None):
        self._kept = kept if kept is not None else BATCHES_SCHEMA.empty_table()
        self._steps: list[int] = []
        self._keys: list[list[str]] = []
        self._pending: list[tuple[int, Sequence[str], torch.Tensor]] = []

    def add(self, step: int, keys: Sequence[str], rows: torch.Tensor | None = None) -> None:
        """Record that `step` trained on `keys`, or on `keys[rows]` for a device tensor of rows: online
        JEST's choice stays on the device until `resolve` copies every pending step's rows in one go."""
        if rows is None:
            self._steps.append(step)
            self._keys.append(list(keys))
        else:
            self._pending.append((step, keys, rows))

    def resolve(self) -> None:
        """Bring pending rows to the host (a sync: call it where the trainer syncs anyway)."""
        if self._pending:
            rows = torch.stack([rows for _, _, rows in self._pending]).cpu().tolist()
            for (step, keys, _), chosen in zip(self._pending, rows, strict=True):
                self._steps.append(step)
                self._keys.append([keys[i] for i in chosen])
            self._pending = []

    def pop_new(self) -> list[tuple[int, list[str]]]:
        """The (step, keys) recorded since the last pop or merge, taken out of the log."""
        self.resolve()
        new = list(zip(self._steps, self._keys, strict=True))
        self._steps, self._keys = [], []
        return new

    def merge(self, ranks_new: list[list[tuple[int, list[str]]]], keep: bool = True) -> None:
        """Each rank's `pop_new` (in rank order) as one log: a step's keys are its ranks' parts in rank
        order, which is the global batch's order. `keep` False (not rank 0): nothing is kept."""
        if not keep:
            return
        steps: dict[int, list[str]] = {}
        for new in ranks_new:
            for step, keys in new:
                steps.setdefault(step, []).extend(keys)
        for step in sorted(steps):
            self._steps.append(step)
            self._keys.append(steps[step])

    def table(self) -> pa.Table:
        self.resolve()
        sizes = [len(keys) for keys in self._keys]
        new = pa.table(
            {
                "step": np.repeat(np.array(self._steps, dtype=np.int64), sizes),
                "key": pa.array([key for keys in self._keys for key in keys], pa.string()),
            },
            schema=BATCHES_SCHEMA,
        )
        return pa.concat_tables([self._kept, new])

    def write(self, run: Path) -> None:
        with atomic_open(str(run / BATCHES_FILE), "wb") as handle:
            pq.write_table(self.table(), handle, compression="zstd")

    @classmethod
    def resumed(cls, run: Path, step: int) -> BatchLog:
        """The log of a run resumed after `step` steps: the rows of steps < `step` (none without a file)."""
        table = read_batches(run)
        if table is None:
            return cls()
        return cls(table.filter(pc.less(table["step"], step)))


def read_batches(run: Path) -> pa.Table | None:
    """batches.parquet (step, key), or None for a run without one."""
    path = run / BATCHES_FILE
    if not path.is_file():
        return None
    return read_table_with_schema(path, BATCHES_SCHEMA, "a batch log of curate train")
