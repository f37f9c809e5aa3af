"""`curate synth`'s settings, validated once, and the counts it reports."""

from __future__ import annotations

from dataclasses import dataclass, field

from curate.errors import CurateError
from curate.synth.plan import CLASSES, NoiseRates
from curate.validate import check, fraction, non_negative


@dataclass(frozen=True)
class SynthConfig:
    n: int = 20_000
    seed: int = 0
    image_size: int = 32
    noise: NoiseRates = field(default_factory=NoiseRates)
    curated_fraction: float = 0.1
    eval_per_class: int = 10
    zipf: float = 0.8
    samples_per_shard: int = 1000
    image_format: str = "jpg"
    concepts: int | None = None  # K: a crawl of K classes only, each varied more (None: all 64)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise CurateError(f"--n must be at least 1, got {self.n}")
        if not 8 <= self.image_size <= 1024:
            raise CurateError(f"--image-size must be between 8 and 1024, got {self.image_size}")
        check(self.seed >= 0, "--seed", "0 or more", self.seed)
        # A share of --n: the curated set is the small clean one a reference trains on (0: none).
        check(fraction(self.curated_fraction), "--curated-fraction", "in [0, 1]", self.curated_fraction)
        check(self.eval_per_class >= 1, "--eval-per-class", "at least 1", self.eval_per_class)
        check(non_negative(self.zipf), "--zipf", "a finite number >= 0 (0: uniform)", self.zipf)
        if self.samples_per_shard < 1:
            raise CurateError(f"--samples-per-shard must be at least 1, got {self.samples_per_shard}")
        if self.image_format not in ("jpg", "png", "webp"):
            raise CurateError(f"--image-format must be jpg, png or webp, got {self.image_format!r}")
        if self.concepts is not None:
            check(1 <= self.concepts <= CLASSES, "--concepts", f"between 1 and {CLASSES}", self.concepts)


@dataclass
class SynthSummary:
    folder: str
    web: int
    curated: int
    eval: int
    shards_written: int
    shards_skipped: int
    noise: dict[str, int]
    classes: int  # distinct classes (concepts) in the three sets
