"""`curate score`'s settings and the counts it reports."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from curate.backends.ray_cluster import RayConfig, check_backend
from curate.errors import CurateError
from curate.runtime import PRECISIONS


@dataclass(frozen=True)
class ScoreConfig:
    model: str
    pretrained: str | None = None
    batch_size: int = 256
    device: str = "auto"
    precision: str = "auto"
    workers: int = 2  # local backend: DataLoader processes; a Ray worker decodes its shard in process
    overwrite: bool = False
    allow_random_init: bool = False
    seed: int = 0  # draws a random-init model's weights, so two runs of one command agree
    # Pixels the images are encoded at (Flexi-JEST's low-resolution scoring; ViTs only): None is the
    # model's own size. Whether the model can encode at it is checked once the model is loaded.
    resolution: int | None = None
    backend: str = "local"
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise CurateError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.workers < 0:
            raise CurateError(f"--workers must be 0 or more, got {self.workers}")
        if self.seed < 0:
            raise CurateError(f"--seed must be 0 or more, got {self.seed}")
        if self.resolution is not None and self.resolution < 1:
            raise CurateError(f"--resolution must be a positive number of pixels, got {self.resolution}")
        if self.precision not in PRECISIONS:
            raise CurateError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        check_backend(self.backend, self.ray)


@dataclass
class ScoreSummary:
    shards_done: int = 0
    shards_skipped: int = 0
    ok: int = 0
    failed: Counter = field(default_factory=Counter)  # status -> samples
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (shard, why): read, but not whole
    seconds: float = 0.0  # scoring only: model loading and worker start-up are in startup_seconds
    startup_seconds: float = 0.0
    device: str = ""

    @property
    def samples(self) -> int:
        return self.ok + sum(self.failed.values())

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0

    def refuse_damage(self) -> None:
        """A damaged shard is not scored (it gets no file, so a rerun retries it): unless the user keeps
        going past it, that is a failed run."""
        if self.damaged:
            named = ", ".join(f"{shard} ({why})" for shard, why in self.damaged[:3])
            more = f" and {len(self.damaged) - 3} more" if len(self.damaged) > 3 else ""
            raise CurateError(
                f"{len(self.damaged)} shard(s) could not be read whole and were not scored: {named}{more}; "
                "repair or re-download them and rerun (only they are scored), or pass --keep-going"
            )

    def add(self, other: ScoreSummary) -> None:
        """Count another worker's shards into this summary."""
        self.shards_done += other.shards_done
        self.ok += other.ok
        self.failed.update(other.failed)
        self.damaged += other.damaged
