"""`curate select`'s settings: one frozen dataclass, defaults and validation in one place (the CLI passes None
for what the user left out)."""

from __future__ import annotations

from dataclasses import dataclass, field

from curate.backends.ray_cluster import RayConfig, check_backend
from curate.errors import CurateError
from curate.jest import CRITERIA, METHODS, false_negatives, selection_size
from curate.validate import check, positive

NEEDS_LEARNER = ("learnability", "hard")
# Offline filters over the whole crawl (select/global_filter.py), beside the per-super-batch METHODS.
GLOBAL_METHODS = ("clipscore", "negclip")
DEFAULT_SUPER_BATCH = 16384
DEFAULT_PARTITION_SIZE = 16_000_000  # samples per partition (select/plan.py says what that costs)


def super_batch_for(batch_size: int, ratio: float) -> int:
    """B such that (1 - ratio) * B = b: the super-batch a `--batch-size` implies."""
    if batch_size < 1:
        raise CurateError(f"--batch-size must be at least 1, got {batch_size}")
    if not 0.0 <= ratio < 1.0:
        raise CurateError(f"--ratio must be in [0, 1), got {ratio}")
    return round(batch_size / (1.0 - ratio))


@dataclass(frozen=True)
class SelectConfig:
    ratio: float
    super_batch: int | None = None  # B; DEFAULT_SUPER_BATCH unless batch_size sets it
    batch_size: int | None = None  # b to keep per super-batch instead: B = b / (1 - ratio)
    chunks: int = 16
    method: str = "jest"
    criterion: str | None = None  # learnability with a learner, else easy
    temperature: float = 1.0
    false_negatives: str | None = (
        None  # "mask:T": JEST's cross terms leave out pairs the reference sees as one
    )
    where: str | None = None
    keep: str | None = None  # a `curate dedup` keep-manifest: only the keys it lists may be selected
    seed: int = 0
    device: str = "auto"
    learner: str | None = None  # score folder of the learner model, matched by key
    shards: str | None = None  # where the scored shards live, recorded for `curate export`
    window: int = 8  # super-batches per shuffle window: bounds memory, sets how widely shards mix
    command: str = ""  # the exact command line, for summary.json
    backend: str = "local"
    ray: RayConfig = field(default_factory=RayConfig)
    # Batches to make (S, the learner's steps): as many seeded passes over the eligible samples as S needs.
    steps: int | None = None
    passes: int | None = None  # or exactly K passes; neither: one pass, its short last super-batch kept
    # Partitions (select/plan.py): exactly P ranges of score files, or as many as make each about N rows.
    partitions: int | None = None
    partition_size: int | None = None  # N; DEFAULT_PARTITION_SIZE unless partitions is given

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise CurateError(f"--ratio must be in [0, 1), got {self.ratio}")
        if self.batch_size is not None:
            implied = super_batch_for(self.batch_size, self.ratio)
            # Both given is fine when they agree: a resolved config (dataclasses.replace) carries both.
            if self.super_batch is not None and self.super_batch != implied:
                raise CurateError("give --super-batch or --batch-size, not both")
            self._resolve("super_batch", implied)
        elif self.super_batch is None:
            self._resolve("super_batch", DEFAULT_SUPER_BATCH)
        if self.super_batch < 1:
            raise CurateError(f"--super-batch must be at least 1, got {self.super_batch}")
        self._resolve("batch_size", round((1.0 - self.ratio) * self.super_batch))
        if self.criterion is None:
            self._resolve("criterion", "learnability" if self.learner else "easy")
        if self.method not in METHODS + GLOBAL_METHODS:
            names = ", ".join(METHODS + GLOBAL_METHODS)
            raise CurateError(f"--method must be one of {names}, got {self.method!r}")
        false_negatives(self.false_negatives)  # a bad spec fails here, before any file is read
        if self.criterion not in CRITERIA:
            raise CurateError(f"--criterion must be one of {', '.join(CRITERIA)}, got {self.criterion!r}")
        if self.criterion in NEEDS_LEARNER and not self.learner and not self.is_global:
            raise CurateError(
                f"--criterion {self.criterion} needs --learner SCORES (a second model's scores of the same "
                "samples); with the reference's scores alone use --criterion easy"
            )
        if not self.temperature > 0 or self.temperature == float("inf"):
            raise CurateError(f"--temperature must be positive and finite, got {self.temperature}")
        if self.seed < 0:
            raise CurateError(f"--seed must be 0 or more, got {self.seed}")
        check(self.chunks >= 1, "--chunks", "at least 1", self.chunks)
        if self.window < 1:
            raise CurateError(f"window must be at least 1 super-batch, got {self.window}")
        if self.steps is not None and self.passes is not None:
            raise CurateError("give --steps or --passes, not both")
        if self.steps is not None and self.steps < 1:
            raise CurateError(f"--steps must be at least 1, got {self.steps}")
        if self.passes is not None and self.passes < 1:
            raise CurateError(f"--passes must be at least 1, got {self.passes}")
        check_backend(self.backend, self.ray)
        if self.partitions is not None:
            check(positive(self.partitions), "--partitions", "a positive integer", self.partitions)
            if self.partition_size is not None:
                raise CurateError("give --partitions or --partition-size, not both")
        elif self.partition_size is None:
            self._resolve("partition_size", DEFAULT_PARTITION_SIZE)
        if self.partition_size is not None:
            size = self.partition_size
            check(positive(size), "--partition-size", "a positive integer", size)
        if not self.is_global:  # a global filter keeps a share of the crawl, not of each super-batch
            # Validates ratio and chunks against B now, not after the index pass.
            selection_size(self.super_batch, self.ratio, self.chunks if self.method == "jest" else 1)

    def _resolve(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)  # frozen: defaults that depend on other fields are set once

    @property
    def mask_threshold(self) -> float | None:
        """T of `--false-negatives mask:T` (None: nothing masked)."""
        return false_negatives(self.false_negatives)

    @property
    def whole_batches(self) -> bool:
        """Whether every batch must hold exactly b samples: so with --steps or --passes, where each pass
        leaves its remainder (< B) out; a plain one-pass selection keeps a short last batch instead."""
        return self.steps is not None or self.passes is not None

    @property
    def is_global(self) -> bool:
        """Whether --method is a filter over the whole crawl (clipscore, negclip), not per super-batch."""
        return self.method in GLOBAL_METHODS

    @property
    def uses_learner(self) -> bool:
        return bool(self.learner) and self.criterion in NEEDS_LEARNER and not self.is_global
