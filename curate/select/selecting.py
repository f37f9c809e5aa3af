"""`curate select`: run a selection method over every super-batch; write the manifest and its summary.

Per super-batch: build the models' PairEmbeddings on the device, draw the selection with a torch.Generator
seeded from (seed, super-batch) so super-batches are independent streams, and score the chosen batch and a
random batch of the same size (its own generator, so the comparison never perturbs the selection) as the
mean criterion value over the b x b pairs. Rows go to the manifest in draw order.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from curate import __version__
from curate.backends.ray_cluster import RayConfig, check_backend
from curate.errors import CurateError
from curate.fileio import atomic_open
from curate.jest import CRITERIA, METHODS, PairEmbeddings, choose, selection_size
from curate.runtime import resolve_device
from curate.score.schema import ScoreFolder, ScoreMetadata, open_score_folder
from curate.select.manifest import (
    MANIFEST_FILE,
    MANIFEST_SCHEMA,
    SHARDS_METADATA_KEY,
    SUMMARY_FILE,
    manifest_writer,
)
from curate.select.superbatches import SuperBatch, build_index, iter_super_batches

NEEDS_LEARNER = ("learnability", "hard")
ROW_GROUP_ROWS = 1 << 16  # manifest rows per Parquet row group (a function of the data only: deterministic)


def super_batch_for(batch_size: int, ratio: float) -> int:
    """B such that (1 - ratio) * B = b: the super-batch a `--batch-size` implies."""
    if batch_size < 1:
        raise CurateError(f"--batch-size must be at least 1, got {batch_size}")
    if not 0.0 <= ratio < 1.0:
        raise CurateError(f"--ratio must be in [0, 1), got {ratio}")
    return round(batch_size / (1.0 - ratio))


@dataclass(frozen=True)
class SelectConfig:
    ratio: float
    super_batch: int = 16384
    chunks: int = 16
    method: str = "jest"
    criterion: str = "easy"
    temperature: float = 1.0
    where: str | None = None
    seed: int = 0
    device: str = "auto"
    learner: str | None = None  # score folder of the learner model, matched by key
    shards: str | None = None  # where the scored shards live, recorded for `curate export`
    window: int = 8  # super-batches per shuffle window: bounds memory, sets how widely shards mix
    command: str = ""  # the exact command line, for summary.json
    backend: str = "local"
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise CurateError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.criterion not in CRITERIA:
            raise CurateError(f"--criterion must be one of {', '.join(CRITERIA)}, got {self.criterion!r}")
        if self.criterion in NEEDS_LEARNER and not self.learner:
            raise CurateError(
                f"--criterion {self.criterion} needs --learner SCORES (a second model's scores of the same "
                "samples); with the reference's scores alone use --criterion easy"
            )
        if self.super_batch < 1:
            raise CurateError(f"--super-batch must be at least 1, got {self.super_batch}")
        if not self.temperature > 0:
            raise CurateError(f"--temperature must be positive, got {self.temperature}")
        if self.window < 1:
            raise CurateError(f"window must be at least 1 super-batch, got {self.window}")
        check_backend(self.backend, self.ray)
        # Validates ratio and chunks against B now, not after the index pass.
        selection_size(self.super_batch, self.ratio, self.chunks if self.method == "jest" else 1)

    @property
    def batch_size(self) -> int:
        return round((1.0 - self.ratio) * self.super_batch)


@dataclass
class SuperBatchResult:
    super_batch: int
    size: int
    selected: int
    shards: int
    selected_score: float
    random_score: float


@dataclass
class SelectedBatch:
    """What one super-batch gives the manifest: its rows in draw order and its line in the summary."""

    index: int
    size: int
    device: str
    rows: pa.Table | None = None  # None (and no result) when it is too small to keep any sample
    result: SuperBatchResult | None = None


@dataclass
class SelectSummary:
    counts: dict = field(default_factory=dict)
    super_batches: list[SuperBatchResult] = field(default_factory=list)
    selected: int = 0
    skipped_last: int = 0  # samples of a final super-batch too small to select from
    seconds: float = 0.0
    device: str = ""

    @property
    def in_super_batches(self) -> int:
        return sum(r.size for r in self.super_batches)

    @property
    def selected_score(self) -> float:
        return (
            float(np.mean([r.selected_score for r in self.super_batches])) if self.super_batches else math.nan
        )

    @property
    def random_score(self) -> float:
        return (
            float(np.mean([r.random_score for r in self.super_batches])) if self.super_batches else math.nan
        )

    @property
    def last(self) -> SuperBatchResult | None:
        return self.super_batches[-1] if self.super_batches else None


def select(
    scores: str,
    out: str,
    config: SelectConfig,
    progress: Callable[[int, int | None], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> SelectSummary:
    """Select from the score folder `scores` into `out/manifest.parquet` and `out/summary.json`.

    Both files are written under temporary names and renamed, so a killed run leaves the folder as it was.
    The same inputs, config and device type give a byte-identical manifest.
    """
    start = time.perf_counter()
    reference = open_score_folder(scores, "scores")
    learner = None
    if config.learner and config.criterion in NEEDS_LEARNER:
        learner = open_score_folder(config.learner, "learner")
    elif config.learner and warn:
        warn(f"--learner is not used by --criterion {config.criterion}; selecting from the reference alone")
    index = build_index(reference, learner, config.where)
    counts = index.counts
    if warn and counts.get("duplicate_keys"):
        warn(f"{counts['duplicate_keys']} samples repeat a key seen before; only the first of each was kept")
    if warn and counts.get("learner_missing"):
        warn(
            f"{counts['learner_missing']} samples have no learner score (key not in {config.learner}): "
            "excluded"
        )
    if warn and counts.get("learner_not_ok"):
        warn(f"{counts['learner_not_ok']} samples were not scored ok by the learner; excluded")
    if not len(index):
        raise CurateError(f"no sample is left to select from in {scores} ({_describe_counts(counts)})")

    summary = SelectSummary(counts=counts)
    metadata = _manifest_metadata(config, reference, learner, scores)
    batches = iter_super_batches(index, reference, learner, config.super_batch, config.seed, config.window)
    with contextlib.ExitStack() as stack:
        if config.backend == "ray":  # joins the cluster now: a bad address fails before any output exists
            from curate.select.ray_backend import ray_selector

            selected = stack.enter_context(ray_selector(reference, learner, config))(batches)
        else:
            device = resolve_device(config.device)
            selected = (select_super_batch(batch, reference, learner, config, device) for batch in batches)
        Path(out).mkdir(parents=True, exist_ok=True)
        total = math.ceil(len(index) / config.super_batch)
        _write_manifest(out, metadata, selected, summary, progress, total)
    summary.seconds = time.perf_counter() - start
    with atomic_open(str(Path(out) / SUMMARY_FILE), "w") as handle:
        json.dump(summary_json(summary, config, scores, reference, learner), handle, indent=2)
        handle.write("\n")
    return summary


def _write_manifest(
    out: str,
    metadata: dict[str, str],
    selected: Iterable[SelectedBatch],
    summary: SelectSummary,
    progress: Callable[[int, int | None], None] | None,
    total: int,
) -> None:
    """Write the super-batches' rows in index order, whichever backend selected them: the row groups are a
    function of the rows alone, so the file's bytes are too."""
    pending: list[pa.Table] = []
    with (
        atomic_open(str(Path(out) / MANIFEST_FILE), "wb") as handle,
        manifest_writer(handle, metadata) as writer,
    ):
        for batch in selected:
            summary.device = batch.device
            if batch.result is None:
                summary.skipped_last = batch.size
            else:
                summary.super_batches.append(batch.result)
                summary.selected += batch.result.selected
                pending.append(batch.rows)
                if sum(t.num_rows for t in pending) >= ROW_GROUP_ROWS:
                    writer.write_table(pa.concat_tables(pending))
                    pending = []
            if progress:
                progress(batch.index + 1, total)
        if pending or not summary.selected:
            writer.write_table(pa.concat_tables(pending) if pending else MANIFEST_SCHEMA.empty_table())


@torch.no_grad()
def select_super_batch(
    batch: SuperBatch,
    reference: ScoreFolder,
    learner: ScoreFolder | None,
    config: SelectConfig,
    device: torch.device,
) -> SelectedBatch:
    """Select from one super-batch: the unit both backends run (locally in order, on Ray in parallel).

    A function of the batch, config and device type alone (its generators are seeded from the seed and the
    super-batch index), so the order super-batches are selected in does not change any row.
    """
    n = len(batch)
    size = round((1.0 - config.ratio) * n)
    if size < 1:  # only the last super-batch can be this small
        return SelectedBatch(batch.index, n, str(device))
    # A short last super-batch keeps the ratio; JEST then uses at most one chunk per selected sample.
    chunks = min(config.chunks, size) if config.method == "jest" else 1
    ref = _pair(batch.reference, reference.metadata, device)
    lrn = _pair(batch.learner, learner.metadata, device) if learner is not None and batch.learner else None
    choice = choose(
        config.method,
        ref,
        lrn,
        config.criterion,
        config.ratio,
        chunks,
        config.temperature,
        generator=torch.Generator(device).manual_seed(_stream_seed(config.seed, batch.index, 0)),
        random_generator=torch.Generator(device).manual_seed(_stream_seed(config.seed, batch.index, 1)),
    )
    selection = choice.selection
    indices = pa.array(selection.indices.cpu().numpy())
    result = SuperBatchResult(
        super_batch=batch.index,
        size=n,
        selected=len(selection),
        shards=batch.shards,
        selected_score=float(choice.selected_score),
        random_score=float(choice.random_score),
    )
    rows = pa.table(
        {
            "key": batch.key.take(indices),
            "shard": batch.shard.take(indices).cast(pa.string()),
            "super_batch": pa.array(np.full(len(selection), batch.index, np.int64)),
            "chunk": pa.array(selection.chunk.cpu().numpy().astype(np.int32)),
            "score": pa.array(selection.score.float().cpu().numpy().astype(np.float32)),
        },
        schema=MANIFEST_SCHEMA,
    )
    return SelectedBatch(batch.index, n, str(device), rows, result)


def _pair(pair, meta: ScoreMetadata, device: torch.device) -> PairEmbeddings:
    # CUDA keeps float16 (the fp32-accumulating GEMM reads it directly); the CPU upcasts once, not per block.
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    image, text = (torch.from_numpy(a).to(device=device, dtype=dtype) for a in pair)
    return PairEmbeddings(image, text, meta.logit_scale, meta.logit_bias)


def _stream_seed(seed: int, super_batch: int, stream: int) -> int:
    """An independent 63-bit seed per (seed, super-batch, stream), from numpy's SeedSequence hashing."""
    return int(np.random.SeedSequence([seed, super_batch, stream]).generate_state(2, np.uint64)[0] >> 1)


def _manifest_metadata(
    config: SelectConfig, reference: ScoreFolder, learner: ScoreFolder | None, scores: str
) -> dict[str, str]:
    """Deterministic facts only (no time, no machine), so the manifest stays byte-identical run to run."""
    metadata = {
        "curate.version": __version__,
        "curate.method": config.method,
        "curate.criterion": config.criterion,
        "curate.ratio": repr(config.ratio),
        "curate.super_batch": str(config.super_batch),
        "curate.chunks": str(config.chunks),
        "curate.temperature": repr(config.temperature),
        "curate.seed": str(config.seed),
        "curate.where": config.where or "",
        "curate.reference_model": reference.metadata.model,
        "curate.learner_model": learner.metadata.model if learner else "",
    }
    if config.shards:
        metadata[SHARDS_METADATA_KEY] = os.path.abspath(config.shards)
    return metadata


def summary_json(
    summary: SelectSummary,
    config: SelectConfig,
    scores: str,
    reference: ScoreFolder,
    learner: ScoreFolder | None,
) -> dict:
    parameters = {k: v for k, v in asdict(config).items() if k not in ("command", "learner", "shards")}
    parameters["batch_size"] = config.batch_size
    return {
        "command": config.command,
        "curate_version": __version__,
        "parameters": parameters,
        "inputs": {
            "scores": os.path.abspath(scores),
            "learner": os.path.abspath(config.learner) if learner else None,
            "shards": os.path.abspath(config.shards) if config.shards else None,
        },
        "models": {
            "reference": asdict(reference.metadata),
            "learner": asdict(learner.metadata) if learner else None,
        },
        "device": summary.device,
        "seconds": round(summary.seconds, 3),
        "counts": {
            **summary.counts,
            "in_super_batches": summary.in_super_batches,
            "skipped_last_super_batch": summary.skipped_last,
            "selected": summary.selected,
            "super_batches": len(summary.super_batches),
        },
        "last_super_batch": _last(summary, config),
        "score": (
            f"mean of A_ij over the b x b pairs of a batch, criterion {config.criterion}; "
            "random_score is a uniform batch of the same size from the same super-batch"
        ),
        "selected_score": summary.selected_score,
        "random_score": summary.random_score,
        "super_batch_results": [asdict(r) for r in summary.super_batches],
    }


def _last(summary: SelectSummary, config: SelectConfig) -> dict | None:
    """What happened to the final super-batch, which is short unless B divides the eligible count."""
    if summary.skipped_last:
        return {
            "size": summary.skipped_last,
            "selected": 0,
            "note": "too small to keep any sample at this ratio",
        }
    last = summary.last
    if last is None:
        return None
    return {"size": last.size, "selected": last.selected, "short": last.size < config.super_batch}


def _describe_counts(counts: dict) -> str:
    parts = [f"{counts['seen']} rows"]
    if counts["not_ok"]:
        parts.append(f"{sum(counts['not_ok'].values())} not ok")
    for name in ("where_filtered", "duplicate_keys", "learner_missing", "learner_not_ok"):
        if counts.get(name):
            parts.append(f"{counts[name]} {name.replace('_', ' ')}")
    return ", ".join(parts)
