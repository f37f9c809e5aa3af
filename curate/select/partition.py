"""The unit of `curate select`: one partition's score files in, its staged manifest part and a result out.

Both backends run `run_partition` (the local loop one partition after another, Ray one task per partition):
it opens the partition's files, makes its index, cuts its super-batches, selects and writes its part under
the staged name the driver gave it. It is a function of the task alone: the partition's seed is
`partition_seed(seed, k)` and its batches are numbered `local · P + k`, so where and in what order the
partitions run changes no byte. A global filter over several partitions runs it twice: first for the
scores' histogram only (`sketch_only`), then to keep the samples at or above the merged threshold.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import CurateError
from curate.runtime import Progress, resolve_device
from curate.score.schema import ScoreFolder
from curate.seeds import partition_seed
from curate.select.config import SelectConfig
from curate.select.global_filter import FilterResult, filter_scores, global_filter
from curate.select.index import SampleIndex, build_index
from curate.select.manifest import (
    count_unique_keys,
    manifest_metadata_for,
    partition_metadata,
    write_manifest,
)
from curate.select.plan import Partition
from curate.select.sketch import sketch
from curate.select.superbatch import SelectedBatch, SuperBatchResult, select_super_batch
from curate.select.window import PassCounts, SuperBatch, iter_passes


@dataclass(frozen=True)
class PartitionTask:
    partition: Partition
    learner: ScoreFolder | None  # the whole learner folder (matched by key), when the criterion uses it
    config: SelectConfig  # the user's: its seed and --steps are the whole selection's
    folder: str  # the output folder, absolute
    staged: str  # the name to write the part under, in `folder`
    inputs: tuple[str, str]  # the content ids of the whole reference and learner folders (every part's)
    threshold: int | None = None  # a global filter over several partitions: the merged sketch's bin
    sketch_only: bool = False  # ... whose first pass returns the histogram and writes nothing


@dataclass
class PartitionResult:
    """What a partition sends back to the driver: counts and per-super-batch lines, never rows."""

    number: int
    counts: dict
    shards: list[str]  # distinct source shards of its eligible samples, for the --shards check
    device: str = ""
    super_batches: list[SuperBatchResult] = field(default_factory=list)
    selected: int = 0
    skipped_last: int = 0  # samples of a final super-batch too small to select from
    passes: PassCounts = field(default_factory=PassCounts)
    unique_keys: int = 0
    batches: int = 0
    filter: FilterResult | None = None
    sketch: np.ndarray | None = None  # BINS counts of its scores (a global filter's first pass)


def run_partition(task: PartitionTask, progress: Progress | None = None) -> PartitionResult:
    """Select one partition; with several, a user error names the partition it arose in."""
    part = task.partition
    try:
        return _run(task, progress)
    except CurateError as error:
        if part.count == 1:
            raise
        files = part.reference.files
        where = f"{Path(files[0]).name}..{Path(files[-1]).name}"
        raise CurateError(f"partition {part.number} of {part.count} ({where}): {error}") from None


def _run(task: PartitionTask, progress: Progress | None) -> PartitionResult:
    part, learner = task.partition, task.learner
    # Its own seed; its own share of --steps (--passes applies to each partition as it is). batch_size
    # None: the config derives it from B again, the same b (B = round(b / (1 - F)) rounds back to b).
    seed = partition_seed(task.config.seed, part.number)
    config = dataclasses.replace(task.config, seed=seed, steps=part.steps, batch_size=None)
    index = build_index(part.reference, learner, config.where, config.keep)
    result = PartitionResult(part.number, index.counts, pc.unique(index.shard.dictionary).to_pylist())
    if task.sketch_only:
        device = resolve_device(config.device) if config.method == "negclip" else None
        scores = filter_scores(index, part.reference, config, device, progress) if len(index) else np.empty(0)
        result.sketch = sketch(scores)
        return result
    if not len(index) and config.whole_batches and part.count > 1:
        raise CurateError("no sample is eligible, so it cannot make its share of whole batches")
    metadata = partition_metadata(
        manifest_metadata_for(task.config, part.reference, learner, task.inputs), part.number, part.count
    )
    folder = Path(task.folder)
    if not len(index):  # nothing to select: an empty part (the driver refuses a selection with no sample)
        write_manifest(folder, metadata, [], name=task.staged)
    elif config.is_global:
        _filter(index, part, config, task, metadata, result, progress)
    else:
        _per_super_batch(index, part, learner, config, task, metadata, result, progress)
    result.unique_keys = count_unique_keys(folder / task.staged)
    return result


def _filter(
    index: SampleIndex,
    part: Partition,
    config: SelectConfig,
    task: PartitionTask,
    metadata: dict[str, str],
    result: PartitionResult,
    progress: Progress | None,
) -> None:
    """clipscore / negclip: the exact top share of a single partition, or all at or above the threshold."""
    device = resolve_device(config.device) if config.method == "negclip" else None
    where = (part.number, part.count)
    kept, tables = global_filter(
        index, part.reference, config, result.passes, device, progress, task.threshold, where
    )
    result.filter, result.batches = kept, kept.batches
    result.device = str(device) if device is not None else "cpu"
    write_manifest(Path(task.folder), metadata, _rows_counted(tables, result), name=task.staged)


def _rows_counted(tables: Iterator[pa.Table], result: PartitionResult) -> Iterator[pa.Table]:
    for table in tables:
        result.selected += table.num_rows
        yield table


def _per_super_batch(
    index: SampleIndex,
    part: Partition,
    learner: ScoreFolder | None,
    config: SelectConfig,
    task: PartitionTask,
    metadata: dict[str, str],
    result: PartitionResult,
    progress: Progress | None,
) -> None:
    """JEST and the per-super-batch baselines: the window pass, each super-batch selected in turn."""
    target = batches_to_make(config, len(index))
    batches = iter_passes(
        index, part.reference, learner, config.super_batch, config.seed, config.window, target, result.passes
    )
    device = resolve_device(config.device)
    selected = (
        select_super_batch(_numbered(b, part), part.reference, learner, config, device) for b in batches
    )
    total = target or -(-len(index) // config.super_batch)
    write_manifest(Path(task.folder), metadata, _counted(selected, result, progress, total), name=task.staged)
    result.device = str(device)
    result.batches = len(result.super_batches)


def batches_to_make(config: SelectConfig, eligible: int) -> int | None:
    """S for --steps, K passes' worth of whole super-batches for --passes, None for one plain pass."""
    if config.passes is not None:
        return config.passes * max(1, eligible // config.super_batch)
    return config.steps


def _numbered(batch: SuperBatch, part: Partition) -> SuperBatch:
    """The super-batch numbered across partitions: local index i of partition k is i · P + k, unique in the
    whole manifest and interleaving the partitions in training order (identity for one partition). Its
    draws are seeded from (partition seed, this number), so no two super-batches share a stream."""
    batch.index = batch.index * part.count + part.number
    return batch


def _counted(
    selected: Iterator[SelectedBatch], result: PartitionResult, progress: Progress | None, total: int
) -> Iterator[pa.Table]:
    """The manifest rows of each super-batch, its summary line kept in `result` on the way."""
    for done, batch in enumerate(selected, 1):
        if batch.result is None:
            result.skipped_last = batch.size
        else:
            result.super_batches.append(batch.result)
            result.selected += batch.result.selected
            yield batch.rows
        if progress:
            progress(done, total)
