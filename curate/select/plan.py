"""Partitions of a `curate select`: contiguous ranges of the reference folder's score files, each selected
on its own (its own index pass, shuffle windows and batches, its own manifest part), so no process ever
holds more than one partition.

A partition's memory is about 100 bytes per sample for its index (key, shard, digest, file and row ids;
with a learner, its ids too) plus one shuffle window of embeddings (window × B × 2 × D float16 per model),
so the default (config.DEFAULT_PARTITION_SIZE, 16M samples) keeps the index near 1.6 GB, and a crawl
below it is one partition: a single global shuffle, exactly the selection of a run that never heard of
partitions. Sizes are counted from the Parquet footers' row counts (no column is read), so planning a
billion samples costs one footer per file. What crosses partitions is nothing: a key repeated in two
partitions' files is kept in both (keys name their shard, so a crawl's keys do not repeat across shards).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from curate.errors import CurateError
from curate.score.schema import ScoreFolder


@dataclass(frozen=True)
class Partition:
    number: int  # k, 0..count-1
    count: int  # P
    reference: ScoreFolder  # the reference folder narrowed to this partition's files
    rows: int  # rows of its score files (all statuses), from their footers
    steps: int | None  # its share of --steps (None without --steps)

    @property
    def file_count(self) -> int:
        return len(self.reference.files)


def plan_partitions(
    reference: ScoreFolder, partitions: int | None, partition_size: int | None, steps: int | None
) -> list[Partition]:
    """Exactly `partitions` partitions, or as many as make each about `partition_size` rows (at most one per
    file), of contiguous files in the folder's order with rows as even as whole files allow."""
    files = reference.files
    rows = np.array([pq.read_metadata(path).num_rows for path in files], np.int64)
    if partitions is None:
        assert partition_size is not None  # the config resolves one of the two
        partitions = min(len(files), max(1, math.ceil(int(rows.sum()) / partition_size)))
    elif partitions > len(files):
        raise CurateError(
            f"--partitions {partitions} is more than the {len(files)} score files of {reference.path}: "
            "a partition is a range of whole files"
        )
    cuts = _cuts(rows, partitions)
    sizes = [int(rows[a:b].sum()) for a, b in zip(cuts, cuts[1:], strict=False)]
    shares = split_steps(steps, sizes) if steps is not None else [None] * partitions
    return [
        Partition(k, partitions, _narrowed(reference, files[a:b]), sizes[k], shares[k])
        for k, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False))
    ]


def _cuts(rows: np.ndarray, count: int) -> list[int]:
    """File boundaries 0 = c_0 < c_1 < ... < c_count = len(rows): c_j the file boundary nearest j/count of
    the rows, each partition keeping at least one file. Integer arithmetic: the plan is exact everywhere."""
    cumulative = np.concatenate([[0], np.cumsum(rows)]) * count  # scaled so j·total needs no division
    total = int(rows.sum())
    cuts = [0]
    for j in range(1, count):
        at = int(np.searchsorted(cumulative, j * total))
        if at > 0 and j * total - cumulative[at - 1] <= cumulative[min(at, len(rows))] - j * total:
            at -= 1
        cuts.append(min(max(at, cuts[-1] + 1), len(rows) - (count - j)))
    return [*cuts, len(rows)]


def split_steps(steps: int, rows: list[int]) -> list[int]:
    """S batches over partitions in proportion to their rows: one each, the rest by largest remainder (ties
    to the lower partition), so the split is a function of the plan alone."""
    count = len(rows)
    if steps < count:
        raise CurateError(
            f"--steps {steps} is fewer than the {count} partitions: each makes at least one batch"
        )
    rest, total = steps - count, sum(rows) or count
    weights = rows if sum(rows) else [1] * count
    shares = [1 + rest * w // total for w in weights]
    remainders = sorted(range(count), key=lambda k: (-(rest * weights[k] % total), k))
    for k in remainders[: steps - sum(shares)]:
        shares[k] += 1
    return shares


def _narrowed(reference: ScoreFolder, files: tuple[str, ...]) -> ScoreFolder:
    """The folder, narrowed to `files`, by absolute paths (a Ray worker has its own working directory)."""
    return absolute_folder(ScoreFolder(reference.path, files, reference.metadata))


def absolute_folder(folder: ScoreFolder) -> ScoreFolder:
    return ScoreFolder(folder.path, tuple(str(Path(f).absolute()) for f in folder.files), folder.metadata)
