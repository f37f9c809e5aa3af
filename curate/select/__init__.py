"""`curate select`: score folders → seeded super-batches → JEST (or a baseline) → manifest + summary.

Config (`config.py`) → unit (`superbatch.py`: one super-batch, run by either backend) → driver (`select`
below: index pass, window pass, backend dispatch, the manifest and summary written once, atomically).
The global filters (`global_filter.py`: clipscore, negclip) replace the window pass and the backend with
one score per sample and a global top share of the crawl.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import CurateError
from curate.fileio import is_local, local_path, remove_stale_temporaries
from curate.runtime import Progress, resolve_device
from curate.score.schema import ScoreFolder, open_score_folder
from curate.select.config import GLOBAL_METHODS, NEEDS_LEARNER, SelectConfig, super_batch_for
from curate.select.global_filter import global_filter
from curate.select.index import SampleIndex, build_index
from curate.select.manifest import (
    MANIFEST_FILE,
    MANIFEST_SCHEMA,
    SUMMARY_FILE,
    count_unique_keys,
    manifest_metadata,
    manifest_metadata_for,
    manifest_path,
    read_manifest,
    read_summary,
    write_manifest,
    write_summary,
)
from curate.select.ray_backend import ray_selector
from curate.select.summary import SelectSummary, describe_counts, summary_json
from curate.select.superbatch import SelectedBatch, select_super_batch
from curate.select.window import SuperBatch, iter_passes, iter_super_batches
from curate.shards.paths import expand_shards, shards_by_name

__all__ = [
    "GLOBAL_METHODS",
    "MANIFEST_FILE",
    "MANIFEST_SCHEMA",
    "NEEDS_LEARNER",
    "SUMMARY_FILE",
    "SampleIndex",
    "SelectConfig",
    "SelectSummary",
    "SuperBatch",
    "build_index",
    "iter_super_batches",
    "manifest_metadata",
    "manifest_path",
    "read_manifest",
    "read_summary",
    "select",
    "super_batch_for",
]


def select(
    scores: str,
    out: str,
    config: SelectConfig,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
) -> SelectSummary:
    """Select from the score folder `scores` into `out/manifest.parquet` and `out/summary.json`.

    Both files are written under temporary names and renamed, so a killed run leaves the folder as it was.
    The same inputs, config and device type give a byte-identical manifest.
    """
    start = time.perf_counter()
    folder = local_path(out, "--output")
    remove_stale_temporaries(folder)  # a killed run's half-written manifest
    reference = open_score_folder(scores, "scores")
    learner = open_score_folder(config.learner, "learner") if config.uses_learner else None
    if config.learner and not config.uses_learner and warn:
        used_by = f"--method {config.method}" if config.is_global else f"--criterion {config.criterion}"
        warn(f"--learner is not used by {used_by}; selecting from the reference alone")
    if config.is_global and config.backend != "local" and warn:
        warn(f"--method {config.method} runs in the driver; --backend {config.backend} is not used")
    index = build_index(reference, learner, config.where)
    counts = index.counts
    for name, message in (
        ("duplicate_keys", "samples repeat a key seen before; only the first of each was kept"),
        ("learner_missing", f"samples have no learner score (key not in {config.learner}): excluded"),
        ("learner_not_ok", "samples were not scored ok by the learner; excluded"),
    ):
        if warn and counts.get(name):
            warn(f"{counts[name]} {message}")
    if not len(index):
        raise CurateError(f"no sample is left to select from in {scores} ({describe_counts(counts)})")
    # Recorded for export: a local folder that does not hold the scored shards is refused now (a URL is
    # recorded as given; its filesystem may be reachable only where export runs).
    if config.shards and is_local(config.shards):
        needed = pc.unique(index.shard.dictionary).to_pylist()
        shards_by_name(expand_shards(config.shards), needed, f"--shards {config.shards}")

    summary = SelectSummary(counts=counts)
    if config.is_global:
        _select_globally(index, reference, config, folder, summary, progress)
    else:
        _select_per_super_batch(index, reference, learner, config, folder, summary, progress)
    summary.unique_keys = count_unique_keys(folder)
    summary.seconds = time.perf_counter() - start
    write_summary(folder, summary_json(summary, config, scores, reference, learner))
    return summary


def _select_globally(
    index: SampleIndex,
    reference: ScoreFolder,
    config: SelectConfig,
    folder: Path,
    summary: SelectSummary,
    progress: Progress | None,
) -> None:
    """clipscore / negclip: scored and kept here in the driver, whatever --backend. They are cheap (one
    float per sample, or one GEMM per super-batch for negclip) and need the whole crawl's scores at once
    for the global threshold, so a cluster would only add transfers."""
    device = resolve_device(config.device) if config.method == "negclip" else None
    summary.filter, tables = global_filter(index, reference, config, summary.passes, device, progress)
    summary.device = str(device) if device is not None else "cpu"
    folder.mkdir(parents=True, exist_ok=True)  # only now: a selection that cannot be made leaves nothing
    write_manifest(folder, manifest_metadata_for(config, reference, None), _rows_counted(tables, summary))


def _rows_counted(tables: Iterator[pa.Table], summary: SelectSummary) -> Iterator[pa.Table]:
    for table in tables:
        summary.selected += table.num_rows
        yield table


def _select_per_super_batch(
    index: SampleIndex,
    reference: ScoreFolder,
    learner: ScoreFolder | None,
    config: SelectConfig,
    folder: Path,
    summary: SelectSummary,
    progress: Progress | None,
) -> None:
    """JEST and the per-super-batch baselines: the window pass, through the backend."""
    target = _batches_to_make(config, len(index))
    batches = iter_passes(
        index, reference, learner, config.super_batch, config.seed, config.window, target, summary.passes
    )
    with _selector(reference, learner, config) as selected:
        folder.mkdir(parents=True, exist_ok=True)  # only now: a run that cannot start leaves nothing
        total = target or math.ceil(len(index) / config.super_batch)
        metadata = manifest_metadata_for(config, reference, learner)
        write_manifest(folder, metadata, _counted(selected(batches), summary, progress, total))


def _batches_to_make(config: SelectConfig, eligible: int) -> int | None:
    """S for --steps, K passes' worth of whole super-batches for --passes, None for one plain pass."""
    if config.passes is not None:
        return config.passes * max(1, eligible // config.super_batch)
    return config.steps


def _counted(
    selected: Iterator[SelectedBatch], summary: SelectSummary, progress: Progress | None, total: int
) -> Iterator[pa.Table]:
    """The manifest rows of each super-batch, its result counted into `summary` on the way."""
    for batch in selected:
        summary.device = batch.device
        if batch.result is None:
            summary.skipped_last = batch.size
        else:
            summary.super_batches.append(batch.result)
            summary.selected += batch.result.selected
            yield batch.rows
        if progress:
            progress(batch.index + 1, total)


@contextlib.contextmanager
def _selector(
    reference: ScoreFolder, learner: ScoreFolder | None, config: SelectConfig
) -> Iterator[Callable[[Iterator[SuperBatch]], Iterator[SelectedBatch]]]:
    """The backend: a function from super-batches to their selections, in order."""
    if config.backend == "ray":  # joins the cluster now: a bad address fails before any output exists
        with ray_selector(reference, learner, config) as selected:
            yield selected
        return
    device = resolve_device(config.device)
    yield lambda batches: (select_super_batch(b, reference, learner, config, device) for b in batches)
