"""`curate export`'s settings and the counts it reports."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from curate.errors import CurateError

MAX_SAMPLES_PER_SHARD = 10_000  # img2dataset's default
# open_clip needs at least workers × GPUs shards; 16 serves a typical 8-GPU node or 16 loader workers
MIN_SHARDS = 16


def default_samples_per_shard(samples: int) -> int:
    """Up to 10,000 per shard, fewer when that would leave under 16 shards for the loader's workers."""
    return max(1, min(MAX_SAMPLES_PER_SHARD, math.ceil(samples / MIN_SHARDS)))


@dataclass(frozen=True)
class ExportConfig:
    # where the source shards live; default: as recorded by `curate select --shards`
    shards: str | None = None
    samples_per_shard: int | None = None  # default: default_samples_per_shard(manifest rows)
    command: str = ""
    allow_missing: bool = False  # go on when under MIN_FOUND of the manifest's keys are in their shards

    def __post_init__(self) -> None:
        if self.samples_per_shard is not None and self.samples_per_shard < 1:
            raise CurateError(f"--samples-per-shard must be at least 1, got {self.samples_per_shard}")


@dataclass
class ExportSummary:
    folder: str
    samples: int = 0  # written by this run, repeats included
    repeats: int = 0  # of them, later occurrences of a key, written as {key}_{n}
    shards_written: int = 0
    shards_skipped: int = 0  # already complete from an earlier run
    source_shards_read: int = 0
    missing: int = 0  # chosen samples not found in their source tar (occurrences)
    missing_examples: list[str] = field(default_factory=list)
    keys_wanted: int = 0  # distinct (source shard, key) pairs this run looked for
    keys_missing: int = 0  # of them, not found
    verified: int = 0  # samples whose image matched the sha256 it was scored with
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (source shard, why its tar ended early)
    # (source shard, why): its chosen samples' parquet rows were rebuilt from their .json members
    rebuilt: list[tuple[str, str]] = field(default_factory=list)
    samples_per_shard: int = 0
    seconds: float = 0.0

    @property
    def shards(self) -> int:
        return self.shards_written + self.shards_skipped
