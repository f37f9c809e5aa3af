"""The settings of `curate dedup`, checked once."""

from __future__ import annotations

import math
from dataclasses import dataclass

from curate.validate import check

SAMPLE_PER_CLUSTER = 20  # k-means sample rows per centroid, at least, when --clusters is not given


@dataclass(frozen=True)
class DedupConfig:
    threshold: float  # cosine of reference image embeddings above which two samples are one
    clusters: int | None = None  # k of k-means; None: default_clusters
    sample: int = 100_000  # rows k-means is fitted on (a seeded sample of the eligible rows)
    iterations: int = 20  # k-means refinements at most
    seed: int = 0
    device: str = "auto"
    bucket_rows: int = 1 << 20  # rows per spill bucket, on average: what the grouping holds at once
    block: int = 4096  # rows per tile of a cluster's cosine matrix
    command: str = ""  # the command line, recorded in summary.json

    def __post_init__(self) -> None:
        t = self.threshold
        check(math.isfinite(t) and 0 < t <= 1, "--threshold", "in (0, 1] (a cosine, e.g. 0.95)", t)
        if self.clusters is not None:
            check(self.clusters >= 1, "--clusters", "at least 1", self.clusters)
        check(self.sample >= 1, "--sample", "at least 1", self.sample)
        check(self.iterations >= 1, "--iterations", "at least 1", self.iterations)
        check(self.seed >= 0, "--seed", "0 or more", self.seed)
        check(self.bucket_rows >= 1, "--bucket-rows", "at least 1", self.bucket_rows)
        check(self.block >= 1, "block", "at least 1", self.block)

    def clusters_for(self, rows: int) -> int:
        """k for `rows` eligible rows: --clusters, or √rows with at least SAMPLE_PER_CLUSTER sample rows each
        (clusters of about √N rows: N^1.5 cosines in all); never more than the rows k-means is fitted on."""
        fitted = min(rows, self.sample)
        k = self.clusters or min(round(math.sqrt(rows)), fitted // SAMPLE_PER_CLUSTER)
        return max(1, min(k, fitted))
