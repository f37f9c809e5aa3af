"""`curate select`: score folders → partitions → seeded super-batches → JEST (or a baseline) → manifest.

Config (`config.py`) → plan (`plan.py`: contiguous ranges of score files, one partition each) → unit
(`partition.py`: one partition's index pass, window pass and selection, written as its own staged part, run
by either backend) → driver (`select` below: plans, runs the partitions, merges their small results, then
publishes the parts and writes summary.json). One partition (any crawl under --partition-size) writes
MANIFEST/manifest.parquet exactly as a selection without partitions always has. The global filters
(`global_filter.py`: clipscore, negclip) keep the top share of the crawl: exactly with one partition, by a
merged histogram's threshold with several (`sketch.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from curate.dedup.keep import check_keep_made_from
from curate.errors import CurateError
from curate.fileio import is_local, output_lock, output_path, remove_stale_temporaries
from curate.runtime import Progress
from curate.score.schema import open_score_folder
from curate.select.config import GLOBAL_METHODS, NEEDS_LEARNER, SelectConfig, super_batch_for
from curate.select.global_filter import FilterResult
from curate.select.index import SampleIndex, build_index
from curate.select.manifest import (
    MANIFEST_FILE,
    MANIFEST_SCHEMA,
    SUMMARY_FILE,
    discard,
    manifest_files,
    manifest_metadata,
    manifest_path,
    publish,
    read_manifest,
    read_summary,
    staged_name,
    write_summary,
)
from curate.select.partition import PartitionResult, PartitionTask, run_partition
from curate.select.plan import Partition, absolute_folder, plan_partitions
from curate.select.ray_backend import Runner, ray_runner
from curate.select.sketch import BINS, bin_floor, threshold_bin
from curate.select.summary import SelectSummary, describe_counts, merged_counts, summary_json
from curate.select.window import SuperBatch, iter_super_batches
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
    "manifest_files",
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
    """Select from the score folder `scores` into `out/manifest.parquet` (one partition) or
    `out/part-00000.parquet`, ... (several), and `out/summary.json`.

    Every partition writes its part under a temporary name; only when all are done are they renamed, the
    files of a previous run that this one does not replace removed, and summary.json written, so a failed
    run leaves the folder's selection as it was. The same inputs, config, partitioning and device type give
    byte-identical parts, whichever backend.
    """
    start = time.perf_counter()
    folder = output_path(out).absolute()
    with output_lock(folder):
        return _select_into(folder, scores, config, progress, warn, start)


def _select_into(
    folder: Path,
    scores: str,
    config: SelectConfig,
    progress: Progress | None,
    warn: Callable[[str], None] | None,
    start: float,
) -> SelectSummary:
    remove_stale_temporaries(folder)  # a killed run's half-written or staged parts
    reference = open_score_folder(scores, "scores")
    learner = open_score_folder(config.learner, "learner") if config.uses_learner else None
    if config.keep:
        check_keep_made_from(config.keep, reference)
    if config.learner and not config.uses_learner and warn:
        used_by = f"--method {config.method}" if config.is_global else f"--criterion {config.criterion}"
        warn(f"--learner is not used by {used_by}; selecting from the reference alone")
    plan = plan_partitions(reference, config.partitions, config.partition_size, config.steps)
    learner = absolute_folder(learner) if learner else None
    staged = [staged_name(part.number, len(plan)) for part in plan]
    inputs = (reference.content_id, learner.content_id if learner else "")  # the whole selection's
    tasks = [
        PartitionTask(part, learner, config, str(folder), name, inputs)
        for part, name in zip(plan, staged, strict=True)
    ]
    summary = SelectSummary()
    with _runner(config) as run, _output_folder(folder, staged):
        if config.is_global and len(plan) > 1:
            results = _two_pass_filter(tasks, run, summary, progress)
        else:
            results = run(tasks, progress)
        _merge(results, plan, summary)
        _check(summary, results, config, scores, warn)
        publish(folder, staged)
    summary.seconds = time.perf_counter() - start
    write_summary(folder, summary_json(summary, config, scores, reference, learner))
    return summary


@contextlib.contextmanager
def _runner(config: SelectConfig) -> Iterator[Runner]:
    """The backend: a function from partition tasks to their results, in order."""
    if config.backend == "ray":  # joins the cluster now: a bad address fails before any output exists
        with ray_runner(config) as run:
            yield run
        return
    yield _run_locally


def _run_locally(tasks: list[PartitionTask], progress: Progress | None) -> list[PartitionResult]:
    """One partition after another, in this process; progress by super-batch over all of them (the later
    partitions' counts estimated from their rows until they run)."""
    results: list[PartitionResult] = []
    done = 0
    for number, task in enumerate(tasks):
        later = sum(_estimated_batches(t) for t in tasks[number + 1 :])
        results.append(run_partition(task, _shifted(progress, done, later) if progress else None))
        done += results[-1].batches
    return results


def _shifted(progress: Progress, done: int, later: int) -> Progress:
    """A partition's progress as part of the whole: after `done` steps, with about `later` still to come."""

    def update(n: int, total: int | None) -> None:
        progress(done + n, None if total is None else done + total + later)

    return update


def _estimated_batches(task: PartitionTask) -> int:
    part, config = task.partition, task.config
    return part.steps or max(1, part.rows // config.super_batch) * (config.passes or 1)


@contextlib.contextmanager
def _output_folder(folder: Path, staged: list[str]) -> Iterator[None]:
    """The output folder while the partitions write into it: on failure their staged parts are removed,
    and the folder too if this run made it, so a selection that cannot be made leaves nothing."""
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        discard(folder, staged)
        if made:
            with contextlib.suppress(OSError):  # not empty: someone else's files are there now
                folder.rmdir()
        raise


def _two_pass_filter(
    tasks: list[PartitionTask], run: Runner, summary: SelectSummary, progress: Progress | None
) -> list[PartitionResult]:
    """clipscore / negclip over several partitions: each sends its scores' histogram, the merged histogram
    gives the bin the top share starts in, and each keeps its samples in that bin or above."""
    # Progress shows each pass in turn (negclip's scores, its costly part, are made in both).
    sketches = run([dataclasses.replace(task, sketch_only=True) for task in tasks], progress)
    histogram = np.sum([result.sketch for result in sketches], axis=0)
    eligible, ratio = int(histogram.sum()), tasks[0].config.ratio
    target = round((1.0 - ratio) * eligible)
    if target < 1:
        method = tasks[0].config.method
        raise CurateError(f"--method {method} --ratio {ratio} keeps none of {eligible} eligible samples")
    threshold = threshold_bin(histogram, target)
    results = run([dataclasses.replace(task, threshold=threshold) for task in tasks], progress)
    kept = sum(result.filter.kept for result in results if result.filter)
    summary.threshold = {
        "how": f"a histogram of {BINS} bins over order-preserving float32 bits, summed over partitions",
        "threshold_bin": threshold,
        "threshold": bin_floor(threshold),
        "exact_top_count": target,
        "kept": kept,
        "kept_share": kept / eligible,
        "target_share": 1.0 - ratio,
        "bound": int(histogram[threshold]),
        "note": "kept - exact_top_count is in [0, bound): the samples of the threshold's bin are all kept",
    }
    return results


def _merge(results: list[PartitionResult], plan: list[Partition], summary: SelectSummary) -> None:
    """The partitions' results summed into the selection's summary."""
    summary.counts = merged_counts([result.counts for result in results])
    summary.device = next((r.device for r in results if r.device), "")
    summary.super_batches = sorted((b for r in results for b in r.super_batches), key=lambda b: b.super_batch)
    summary.selected = sum(r.selected for r in results)
    summary.skipped_last = sum(r.skipped_last for r in results)
    summary.passes.passes = max(r.passes.passes for r in results)  # each partition makes its own passes
    summary.passes.left_out = sum(r.passes.left_out for r in results)
    # Distinct keys add up: a key's first occurrence is kept within a partition, and keys (a shard's
    # number and row) do not recur across shards, so not across partitions either.
    summary.unique_keys = sum(r.unique_keys for r in results)
    filters = [r.filter for r in results if r.filter is not None]
    if filters:
        summary.filter = _merged_filter(filters, summary.threshold)
    summary.partitions = [
        {
            "partition": part.number,
            "files": part.file_count,
            "first_file": Path(part.reference.files[0]).name,
            "last_file": Path(part.reference.files[-1]).name,
            "rows": part.rows,
            "eligible": result.counts["eligible"],
            "steps": part.steps,
            "batches": result.batches,
            "selected": result.selected,
            "passes": result.passes.passes,
        }
        for part, result in zip(plan, results, strict=True)
    ]


def _merged_filter(filters: list[FilterResult], threshold: dict | None) -> FilterResult:
    if len(filters) == 1:
        return filters[0]
    first = filters[0]
    return FilterResult(
        first.method,
        first.score,
        eligible=sum(f.eligible for f in filters),
        kept=sum(f.kept for f in filters),
        threshold=threshold["threshold"] if threshold else first.threshold,
        batches=sum(f.batches for f in filters),
        random_batches=first.random_batches,
        random_batch_size=max(f.random_batch_size for f in filters),
    )


def _check(
    summary: SelectSummary,
    results: list[PartitionResult],
    config: SelectConfig,
    scores: str,
    warn: Callable[[str], None] | None,
) -> None:
    """What the driver says or refuses once every partition is done, before anything is published."""
    counts = summary.counts
    for name, message in (
        ("duplicate_keys", "samples repeat a key seen before; only the first of each was kept"),
        ("learner_missing", f"samples have no learner score (key not in {config.learner}): excluded"),
        ("learner_not_ok", "samples were not scored ok by the learner; excluded"),
    ):
        if warn and counts.get(name):
            warn(f"{counts[name]} {message}")
    if not counts["eligible"]:
        raise CurateError(f"no sample is left to select from in {scores} ({describe_counts(counts)})")
    # Recorded for export: a local folder that does not hold the scored shards is refused (a URL is
    # recorded as given; its filesystem may be reachable only where export runs).
    if config.shards and is_local(config.shards):
        needed = sorted({shard for result in results for shard in result.shards})
        shards_by_name(expand_shards(config.shards), needed, f"--shards {config.shards}")
