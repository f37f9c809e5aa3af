"""The units of `curate dedup`: one score file's eligible rows to spill rows with their nearest centroid
(`assign_file`), and one bucket of spill rows to the rows it keeps (`group_bucket`). The driver (`run.py`)
runs them file by file, then bucket by bucket.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from curate.dedup.config import DedupConfig
from curate.dedup.grouping import keepers, near_duplicate_groups, nearest, normalise
from curate.score.schema import ScoreFolder, checked_embeddings, embeddings_numpy, refuse_null_keys


def assign_file(
    folder: ScoreFolder, file_id: int, eligible: np.ndarray, centroids: torch.Tensor, block: int
) -> pa.Table:
    """One score file's `eligible` rows as spill rows (`spill.SPILL_COLUMNS`), each with its nearest
    centroid."""
    table = folder.read_file(file_id, ["key", "shard", "similarity", "image_emb"]).filter(pa.array(eligible))
    refuse_null_keys(folder.files[file_id], table["key"].null_count + table["shard"].null_count)
    emb = checked_embeddings(table["image_emb"], folder.files[file_id], folder.metadata.embed_dim)
    cluster = nearest(normalise(torch.from_numpy(emb).to(centroids.device)), centroids, block)
    return pa.table(
        {
            "cluster": pa.array(cluster.cpu().numpy().astype(np.int32)),
            "file": pa.array(np.full(len(emb), file_id, np.int32)),
            "row": pa.array(np.flatnonzero(eligible).astype(np.int64)),
            "key": table["key"],
            "shard": table["shard"],
            "similarity": table["similarity"],
            "image_emb": table["image_emb"],
        }
    )


@dataclass
class BucketResult:
    kept: pa.Table  # key, shard, similarity, cluster, file, row, group_size of each row kept
    groups: int  # near-duplicate groups of two or more
    largest: int  # rows in the largest group
    removed_by_shard: Counter


def group_bucket(table: pa.Table, config: DedupConfig, device: torch.device) -> BucketResult:
    """Group each cluster of a bucket (rows sorted by cluster, file, row) and keep one row per group."""
    cluster = table["cluster"].to_numpy()
    similarity = table["similarity"].to_numpy()
    emb = embeddings_numpy(table["image_emb"])
    keep = np.zeros(len(cluster), bool)
    size = np.ones(len(cluster), np.int32)
    groups, largest = 0, 1
    starts = np.flatnonzero(np.r_[True, cluster[1:] != cluster[:-1]]) if len(cluster) else np.array([], int)
    for start, end in zip(starts, [*starts[1:], len(cluster)], strict=True):
        rows = normalise(torch.from_numpy(emb[start:end]).to(device))
        labels = near_duplicate_groups(rows, config.threshold, config.block)
        members = np.bincount(labels)
        keep[start:end] = keepers(labels, similarity[start:end])
        size[start:end] = members[labels]
        groups += int((members > 1).sum())
        largest = max(largest, int(members.max()))
    removed = Counter(table["shard"].filter(pa.array(~keep)).to_pylist())
    kept = table.filter(pa.array(keep)).select(["key", "shard", "similarity", "cluster", "file", "row"])
    kept = kept.append_column("group_size", pa.array(size[keep], pa.int32()))
    return BucketResult(kept, groups, largest, removed)
