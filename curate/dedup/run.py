"""The driver of `curate dedup`: semantic near-duplicate removal (SemDeDup) on a score folder's reference
image embeddings, running the units (`unit.py`) over the folder's files, then over the spill's buckets.

Only eligible rows are compared (`curate.score.schema.eligible_rows`: status ok, finite similarity), the
rows `curate select` may draw.

1. Sample: a seeded sample of at most `sample` eligible rows is read and k-means fits k centroids to it.
2. Assign: each score file in turn; every eligible row goes to its nearest centroid and is spilled, with its
   key, shard, (file, row), similarity and image embedding, to the bucket file of its cluster's range.
3. Group: one bucket at a time, cluster by cluster; pairs with cosine > threshold join a group (connected
   components) and the group keeps the row of highest image–text similarity (of equals, the first in
   file, row order). Near duplicates that k-means put in two clusters are not compared: the price of
   never comparing all pairs.

Memory is bounded, never all N embeddings at once: the k-means sample (≤ sample × D float32 on the
device: 100 MB at 100k × 256), one score file's columns, one bucket (about bucket_rows rows of ~2D + 60
bytes, more if k-means leaves its clusters uneven) with its largest cluster as float32 on the device, one
block × block cosine tile and at most MAX_EDGES pairs; and O(N) small columns of the kept rows (~60 bytes
each) until they are written. Disk: the spill, about N × (2D + 60) bytes under $TMPDIR, removed at the end.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from curate import __version__
from curate.dedup.config import DedupConfig
from curate.dedup.grouping import kmeans, normalise
from curate.dedup.keep import SCORES_CONTENT_METADATA_KEY, write_keep, write_summary
from curate.dedup.spill import Buckets
from curate.dedup.unit import assign_file, group_bucket
from curate.errors import CurateError
from curate.fileio import absolute, output_lock, output_path, remove_stale_temporaries, spill_folder
from curate.runtime import StatusProgress, resolve_device
from curate.score.schema import (
    ELIGIBILITY_COLUMNS,
    ScoreFolder,
    eligible_rows,
    embeddings_numpy,
    open_score_folder,
)


@dataclass
class DedupSummary:
    threshold: float
    clusters: int
    sample: int  # rows k-means was fitted on
    rows_seen: int  # every row of every score file
    rows_in: int  # the eligible rows compared
    kept: int
    removed: int
    groups: int  # near-duplicate groups of two or more
    largest_group: int
    removed_by_shard: dict[str, int]
    seconds: float
    seed: int
    device: str
    scores: str
    model: str
    command: str
    version: str = __version__
    keep: str = ""  # the keep-manifest's path
    not_ok: int = 0  # rows not compared: not eligible (status not ok, or no finite similarity)


def dedup(scores: str, out: str, config: DedupConfig, progress: StatusProgress | None = None) -> DedupSummary:
    """Write `out/keep.parquet` and `out/summary.json` (both atomically); the module docstring says how.

    `progress(done, total, phase)` counts rows: every file's rows while sampling and while assigning, then
    the eligible rows while grouping."""
    started = time.monotonic()
    target = output_path(out)
    with output_lock(target):
        return _dedup_into(target, scores, config, progress, started)


def _dedup_into(
    target: Path, scores: str, config: DedupConfig, progress: StatusProgress | None, started: float
) -> DedupSummary:
    folder = open_score_folder(scores)
    remove_stale_temporaries(target)
    device = resolve_device(config.device)

    eligible = [eligible_rows(folder.read_file(i, ELIGIBILITY_COLUMNS)) for i in range(len(folder.files))]
    seen = sum(len(mask) for mask in eligible)
    n = sum(int(mask.sum()) for mask in eligible)
    if n == 0:
        raise CurateError(f"{scores} holds no eligible rows to compare (status ok, finite similarity)")
    k = config.clusters_for(n)
    done = 0

    def tick(rows: int, phase: str) -> None:
        nonlocal done
        done += rows
        if progress:
            progress(done, 2 * seen + n, phase)

    picked = _sample([int(mask.sum()) for mask in eligible], config.sample, config.seed)
    centroids = _fit(folder, eligible, picked, k, config, device, tick)
    per_bucket = math.ceil(k / min(k, max(1, math.ceil(n / config.bucket_rows))))
    with spill_folder("dedup") as spill:
        buckets = Buckets(Path(spill), math.ceil(k / per_bucket), per_bucket, folder.metadata.embed_dim)
        with buckets:
            for file_id, mask in enumerate(eligible):
                buckets.add(assign_file(folder, file_id, mask, centroids, config.block))
                tick(len(mask), "assigning")
        parts = []
        for b in range(len(buckets.paths)):
            table = buckets.read(b).sort_by(
                [("cluster", "ascending"), ("file", "ascending"), ("row", "ascending")]
            )
            parts.append(group_bucket(table, config, device))
            tick(table.num_rows, "grouping")

    table = pa.concat_tables(p.kept for p in parts).sort_by([("file", "ascending"), ("row", "ascending")])
    path = write_keep(target, table.drop_columns(["file", "row"]), _metadata(config, folder, k))
    removed_by_shard = sum((p.removed_by_shard for p in parts), Counter())
    summary = DedupSummary(
        threshold=config.threshold,
        clusters=k,
        sample=int(sum(len(p) for p in picked)),
        rows_seen=seen,
        rows_in=n,
        kept=table.num_rows,
        removed=n - table.num_rows,
        groups=sum(p.groups for p in parts),
        largest_group=max(p.largest for p in parts),
        removed_by_shard=dict(sorted(removed_by_shard.items())),
        seconds=round(time.monotonic() - started, 3),
        seed=config.seed,
        device=str(device),
        scores=absolute(folder.path),
        model=folder.metadata.model,
        command=config.command,
        keep=str(path),
        not_ok=seen - n,
    )
    write_summary(target, asdict(summary))
    return summary


def _fit(
    folder: ScoreFolder,
    eligible: list[np.ndarray],
    picked: list[np.ndarray],
    k: int,
    config: DedupConfig,
    device: torch.device,
    tick: Callable[[int, str], None],
) -> torch.Tensor:
    """k centroids fitted to the sampled rows (`picked`: positions among each file's eligible rows)."""
    sample = []
    for file_id, mask in enumerate(eligible):
        if len(picked[file_id]):
            emb = embeddings_numpy(folder.read_file(file_id, ["image_emb"])["image_emb"])
            sample.append(emb[np.flatnonzero(mask)[picked[file_id]]])
        tick(len(mask), "sampling")
    rows = normalise(torch.from_numpy(np.concatenate(sample)).to(device))
    return kmeans(rows, k, torch.Generator().manual_seed(config.seed), config.iterations, config.block)


def _sample(counts: list[int], size: int, seed: int) -> list[np.ndarray]:
    """Per file, the positions among its eligible rows that k-means is fitted on: all rows when they are at
    most `size`, else a seeded draw of `size` without replacement."""
    n = sum(counts)
    chosen = (
        np.arange(n) if n <= size else np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    )
    bounds = np.cumsum([0, *counts])
    return [
        chosen[(chosen >= lo) & (chosen < hi)] - lo for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def _metadata(config: DedupConfig, folder: ScoreFolder, clusters: int) -> dict[str, str]:
    """Deterministic facts only (no time, no machine), so the same inputs give the same bytes."""
    return {
        "curate.version": __version__,
        "curate.threshold": repr(config.threshold),
        "curate.clusters": str(clusters),
        "curate.sample": str(config.sample),
        "curate.iterations": str(config.iterations),
        "curate.seed": str(config.seed),
        "curate.reference_model": folder.metadata.model,
        "curate.scores": absolute(folder.path),
        # what those scores held: select --keep refuses the file once they were made anew in place
        SCORES_CONTENT_METADATA_KEY: folder.content_id,
    }
