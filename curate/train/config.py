"""`curate train`'s settings: one frozen dataclass, validated once, saved with every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from curate.errors import CurateError

# Settings that define the trajectory: a resumed run must match them to continue exactly.
TRAJECTORY_FIELDS = (
    "data", "manifest", "model", "pretrained", "batch_size", "lr", "warmup", "wd", "beta2", "grad_clip",
    "seed", "cache", "online_jest", "ref", "ratio", "chunks", "criterion", "temperature",
)  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    data: tuple[str, ...]
    out: str
    model: str = "siglip-tiny"
    pretrained: str | None = None
    manifest: str | None = None
    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-3
    warmup: int = 100
    wd: float = 0.1
    beta2: float = 0.95  # SigLIP's large-batch setting
    grad_clip: float = 1.0
    eval: str | None = None
    eval_every: int = 0  # 0: only at the end
    save_every: int = 0  # 0: only at the end
    log_every: int = 10
    workers: int = 2
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    resume: bool = False
    cache: str = "auto"  # memory | stream | auto (memory when the decoded set fits in a quarter of RAM)
    shuffle_buffer: int = 10_000
    online_jest: bool = False
    ref: str | None = None
    ratio: float = 0.8
    chunks: int = 16
    criterion: str = "learnability"
    temperature: float = 1.0
    command: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise CurateError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup", "eval_every", "save_every", "workers"):
            if getattr(self, name) < 0:
                raise CurateError(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}")
        if self.lr <= 0 or self.wd < 0 or not 0 < self.beta2 < 1:
            raise CurateError("--lr must be > 0, --wd >= 0 and beta2 in (0, 1)")
        if self.cache not in ("auto", "memory", "stream"):
            raise CurateError(f"--cache must be auto, memory or stream, got {self.cache!r}")
        if self.online_jest:
            if not self.ref:
                raise CurateError("--online-jest needs --ref SCORES (the reference model's scores)")
            if not 0 <= self.ratio < 1:
                raise CurateError(f"--ratio must be in [0, 1), got {self.ratio}")
            if self.criterion not in ("learnability", "easy", "hard"):
                raise CurateError(f"--criterion must be learnability, easy or hard, got {self.criterion!r}")
        if self.eval_every and not self.eval:
            raise CurateError("--eval-every needs --eval EVALSET")

    @property
    def super_batch(self) -> int:
        """B = b / (1 - F): how many samples online JEST scores to keep b."""
        return round(self.batch_size / (1 - self.ratio)) if self.online_jest else self.batch_size

    def as_dict(self) -> dict:
        return asdict(self)
