"""`curate eval`'s settings and the report it prints."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from curate.errors import CurateError


@dataclass(frozen=True)
class EvalConfig:
    model: str
    pretrained: str | None = None
    batch_size: int = 256
    device: str = "auto"
    precision: str = "auto"
    split: str = "test"
    allow_random_init: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise CurateError(f"--batch-size must be at least 1, got {self.batch_size}")


@dataclass
class EvalReport:
    model: str
    evalset: str
    metrics: dict[str, float | int]
    device: str  # "cpu fp32"
    seconds: float
    skipped: Counter = field(default_factory=Counter)  # reason -> samples left out of the eval set
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (tar, why it ended early)
    captioned: int = 0  # images with a caption: retrieval needs all of them

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "evalset": self.evalset,
            **self.metrics,
            "skipped": dict(sorted(self.skipped.items())),
            "device": self.device,
            "seconds": round(self.seconds, 3),
        }
