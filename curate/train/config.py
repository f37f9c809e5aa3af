"""`curate train`'s settings: frozen dataclasses in groups, validated once, saved with every checkpoint.

Every field says whether it defines the trajectory (`trajectory(...)`: a resumed run must match it to
continue exactly) or only how this session runs (`operational(...)`: where and how often to log, on
which device). The resume check walks those marks, nested groups included, and an unmarked field stops
the import, so a new setting can never be left out of the check by accident.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any

from curate.errors import CurateError
from curate.jest import CRITERIA, selection_size
from curate.jest import false_negatives as jest_false_negatives
from curate.runtime import PRECISIONS
from curate.validate import check as _check
from curate.validate import positive as _positive

CACHES = ("auto", "memory", "stream")
SCOPES = ("global", "local")
ORDERS = ("batches", "shuffle")
DEFAULT_BATCH_SIZE = 256


def trajectory(default: Any = MISSING, **kwargs: Any) -> Any:
    """A setting that shapes the weights: --resume refuses to continue a run under another value."""
    return field(default=default, metadata={"trajectory": True}, **kwargs)


def operational(default: Any = MISSING, **kwargs: Any) -> Any:
    """A setting of this session only (logging, evaluation, device): --resume may change it."""
    return field(default=default, metadata={"trajectory": False}, **kwargs)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup and cosine decay to zero at the last step."""

    lr: float = trajectory(1e-3)  # peak
    warmup: int = trajectory(100)  # steps
    wd: float = trajectory(0.1)  # on matrices only
    beta2: float = trajectory(0.95)  # SigLIP's large-batch setting
    grad_clip: float = trajectory(1.0)  # max gradient norm

    def __post_init__(self) -> None:
        _check(_positive(self.lr), "--lr", "a finite number > 0", self.lr)
        _check(self.warmup >= 0, "--warmup", "0 or more", self.warmup)
        _check(math.isfinite(self.wd) and self.wd >= 0, "--wd", "a finite number >= 0", self.wd)
        _check(0 < self.beta2 < 1, "--beta2", "in (0, 1)", self.beta2)
        _check(_positive(self.grad_clip), "--grad-clip", "a finite number > 0", self.grad_clip)


@dataclass(frozen=True)
class DataConfig:
    """What the run trains on and how it is read."""

    paths: tuple[str, ...] = trajectory()  # shard folders, tar paths or brace patterns
    manifest: str | None = trajectory(None)  # a selection's batches (or, --order shuffle, its keys)
    # batches: step t trains the manifest's batch t; shuffle: its keys as a set, in random batches.
    # Default: batches with a manifest (shuffle under online JEST, which picks its own batches).
    order: str | None = trajectory(None)
    cache: str = trajectory("auto")  # memory | stream | auto (memory when decoded it fits a quarter of RAM)
    # The stream's order depends on these two as well: a stream resumed under other values goes on in
    # another (equally shuffled) order, exact only under the same (stream.py). The cache's depends on neither.
    shuffle_buffer: int = operational(10_000)  # samples, when streaming
    workers: int = operational(2)  # DataLoader processes decoding images
    # Train on a manifest of which the data holds under 99% of the keys (else refused: the wrong shards).
    allow_missing: bool = operational(False)

    def __post_init__(self) -> None:
        if not self.paths:
            raise CurateError("no training data: give shard folders, tar paths or a brace pattern")
        _check(self.cache in CACHES, "--cache", "auto, memory or stream", repr(self.cache))
        _check(self.order in (None, *ORDERS), "--order", "batches or shuffle", repr(self.order))
        _check(self.shuffle_buffer >= 1, "--shuffle-buffer", "at least 1", self.shuffle_buffer)
        _check(self.workers >= 0, "--workers", "0 or more", self.workers)


@dataclass(frozen=True)
class OnlineJestConfig:
    """Online JEST (the paper's setting): each step keeps b of a super-batch B = b / (1 - ratio)."""

    ref: str | None = trajectory(None)  # the reference's score folder (`curate score` output)
    ratio: float = trajectory(0.8)  # filtering ratio F
    chunks: int = trajectory(16)  # N
    criterion: str = trajectory("learnability")
    temperature: float = trajectory(1.0)  # τ
    # Flexi-JEST: the learner embeds each super-batch at this many pixels (None: the model's own size).
    # Here, not beside --multi-resolution: it only means something where a super-batch is scored.
    score_resolution: int | None = trajectory(None)
    # "mask:T": pairs the reference sees as one thing leave the cross terms (curate.jest.FalseNegatives)
    false_negatives: str | None = trajectory(None)
    # Under several processes: global chooses b of the whole super-batch B (every cross-rank pair counts;
    # the chosen pairs move to the rank that trains them); local has each rank keep b/W of its own B/W.
    scope: str = trajectory("global")

    def __post_init__(self) -> None:
        jest_false_negatives(self.false_negatives)
        _check(
            self.scope in SCOPES, "--online-scope", "global or local", repr(self.scope)
        )  # a bad spec fails in one line, before anything runs
        if not self.ref:
            raise CurateError("--online-jest needs --ref SCORES (the reference model's scores)")
        _check_pixels(self.score_resolution, "--score-resolution")
        _check(math.isfinite(self.ratio) and 0 <= self.ratio < 1, "--ratio", "in [0, 1)", self.ratio)
        _check(self.chunks >= 1, "--chunks", "at least 1", self.chunks)
        _check(self.criterion in CRITERIA, "--criterion", " or ".join(CRITERIA), repr(self.criterion))
        _check(_positive(self.temperature), "--temperature", "a finite number > 0", self.temperature)

    @property
    def mask_threshold(self) -> float | None:
        """T of `--false-negatives mask:T` (None: nothing masked)."""
        return jest_false_negatives(self.false_negatives)

    def super_batch(self, batch_size: int) -> int:
        """B = b / (1 - F): how many samples are scored to keep b."""
        return round(batch_size / (1 - self.ratio))


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = trajectory()
    out: str = operational()  # the run folder; a copied run resumes from its new place
    model: str = trajectory("siglip-tiny")
    pretrained: str | None = trajectory(None)
    steps: int = trajectory(1000)  # the cosine schedule ends here, so it shapes every step's LR
    # b, the pairs each step trains on: DEFAULT_BATCH_SIZE, or with --order batches the manifest's (which
    # `with_batch_size` fills in before the run starts; another one is an error there)
    batch_size: int | None = trajectory(None)
    seed: int = trajectory(0)  # model init and data order
    optim: OptimConfig = trajectory(default_factory=OptimConfig)
    online: OnlineJestConfig | None = trajectory(None)  # None: train on every batch as drawn
    # Flexi-JEST: each step trains a random half of its batch at this many pixels, the other half at the
    # model's own size (None: all of it at its own size). Top-level, beside batch_size, not in `optim`: it
    # changes what a step's forward computes (and costs), with or without online JEST; the optimizer and
    # its schedule are untouched.
    multi_resolution: int | None = trajectory(None)
    eval: str | None = operational(None)  # an eval set (clip_benchmark layout)
    eval_every: int = operational(0)  # 0: only at the end
    save_every: int = operational(0)  # 0: only at the end
    log_every: int = operational(10)
    device: str = operational("auto")
    precision: str = operational("auto")
    resume: bool = operational(False)
    # Processes training together (torchrun, srun): b is split over them. Set by the trainer from the
    # launcher's environment, never by an option; a run resumes only under the same number.
    world_size: int = trajectory(1)
    collective_timeout: float = operational(600.0)  # seconds a rank waits for the others before failing
    command: str = operational("", compare=False)  # the command line, for the record

    def __post_init__(self) -> None:
        data = self.data
        if data.order is None:  # frozen: a default that depends on other groups is set once, here
            order = "shuffle" if self.online or not data.manifest else "batches"
            object.__setattr__(self, "data", replace(data, order=order))
            data = self.data
        if data.order == "batches" and self.online:
            raise CurateError("--order batches trains a manifest's batches; online JEST chooses its own")
        if data.order == "batches" and not data.manifest:
            raise CurateError("--order batches needs --manifest MANIFEST (a curate select output)")
        if self.batch_size is None and not self.trains_batches:
            object.__setattr__(self, "batch_size", DEFAULT_BATCH_SIZE)
        _check(self.steps >= 1, "--steps", "at least 1", self.steps)
        if self.batch_size is not None:
            _check(self.batch_size >= 1, "--batch-size", "at least 1", self.batch_size)
        _check(self.log_every >= 1, "--log-every", "at least 1", self.log_every)
        _check(self.world_size >= 1, "world_size", "at least 1", self.world_size)
        _check(
            _positive(self.collective_timeout), "--collective-timeout", "seconds > 0", self.collective_timeout
        )
        _check(self.seed >= 0, "--seed", "0 or more", self.seed)
        _check(self.eval_every >= 0, "--eval-every", "0 or more", self.eval_every)
        _check(self.save_every >= 0, "--save-every", "0 or more", self.save_every)
        _check(self.precision in PRECISIONS, "--precision", ", ".join(PRECISIONS), repr(self.precision))
        _check_pixels(self.multi_resolution, "--multi-resolution")
        if self.multi_resolution is not None and self.batch_size is not None:
            _check(self.batch_size >= 2, "--batch-size", "2 or more with --multi-resolution", self.batch_size)
        if self.eval_every and not self.eval:
            raise CurateError("--eval-every needs --eval EVALSET")
        if self.online:
            # ratio and chunks against B now, not at the first step
            selection_size(self.super_batch, self.online.ratio, self.online.chunks)

    @property
    def trains_batches(self) -> bool:
        """Whether step t trains the manifest's batch t (else batches are drawn from the data)."""
        return self.data.order == "batches"

    @property
    def super_batch(self) -> int:
        """Samples drawn per step: B for online JEST, else b."""
        return self.online.super_batch(self.batch_size) if self.online else self.batch_size

    def with_batch_size(self, batch_size: int) -> TrainConfig:
        """This config with the manifest's batch size, which `--order batches` trains (checked equal to
        an explicit --batch-size)."""
        if self.batch_size is not None and self.batch_size != batch_size:
            raise CurateError(
                f"--batch-size {self.batch_size}: the manifest's batches hold {batch_size} samples each "
                "(leave --batch-size out, select again with --batch-size, or train --order shuffle)"
            )
        return replace(self, batch_size=batch_size)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """The inverse of `as_dict` (config.json, a checkpoint's `train_config`); unknown keys are errors."""
        return _build(cls, values, "train")


def _check_pixels(value: int | None, option: str) -> None:
    """None (the model's own size) or a whole number of pixels; whether the model can encode at it is
    checked once it is loaded (`ImageTextModel.check_resolution`)."""
    ok = value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
    _check(ok, option, "a whole number of pixels, at least 1", value)


def _build(cls: type, values: object, where: str) -> Any:
    if not isinstance(values, dict):
        raise CurateError(f"{where}: expected an object of settings, got {type(values).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise CurateError(f"{where}: unknown settings {', '.join(unknown)}")
    groups = {"data": DataConfig, "optim": OptimConfig, "online": OnlineJestConfig}
    kwargs = {}
    for name, value in values.items():
        if name in groups and value is not None:
            value = _build(groups[name], value, f"{where}.{name}")
        elif name == "paths":
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as error:  # a required setting is missing
        raise CurateError(f"{where}: {error}") from None


def trajectory_changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the trajectory settings in which two configs differ (`optim.lr`, `online`)."""
    changed = []
    for f in fields(new):
        if not f.metadata["trajectory"]:
            continue
        before, after = getattr(old, f.name), getattr(new, f.name)
        if is_dataclass(before) and is_dataclass(after):
            changed += trajectory_changes(before, after, f"{prefix}{f.name}.")
        elif before != after:
            changed.append(prefix + f.name)
    return changed


def _require_marks(*classes: type) -> None:
    for cls in classes:
        for f in fields(cls):
            if "trajectory" not in f.metadata:
                raise TypeError(f"{cls.__name__}.{f.name}: declare it with trajectory() or operational()")


_require_marks(OptimConfig, DataConfig, OnlineJestConfig, TrainConfig)
