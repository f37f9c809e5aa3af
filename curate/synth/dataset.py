"""`curate synth`: write the planned web, curated and eval sets to disk, shard by shard, resumably."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from curate.errors import CurateError
from curate.evaluate.evalset import write_eval_set
from curate.fileio import atomic_open, filesystem, join, remove_stale_temporaries
from curate.shards import ShardRecord, sample_key, shard_done, write_shard, write_sizes
from curate.synth.plan import CLASSES, NoiseRates, PlannedSample, plan
from curate.synth.scenes import render
from curate.synth.vocabulary import ZEROSHOT_TEMPLATES, class_names
from curate.validate import check, fraction, non_negative

EXTRA_FIELDS = (
    pa.field("noise", pa.string()),
    pa.field("label", pa.int32()),
    pa.field("shape", pa.string()),
    pa.field("colour", pa.string()),
    pa.field("size", pa.string()),
    pa.field("position", pa.string()),
    pa.field("background", pa.string()),
    # a planted duplicate's source key (null otherwise): the ground truth that `curate dedup` is measured on
    pa.field("duplicate_of", pa.string()),
)


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


def synthesize(
    config: SynthConfig, out: str, workers: int = 2, progress: Callable[[int, int], None] | None = None
) -> SynthSummary:
    """Write `out/web`, `out/curated` and `out/eval`; shards already complete are kept (resume).

    `progress(done, total)` is called as samples are written.
    """
    check(workers >= 0, "--workers", "0 or more", workers)  # 0 or 1: render in this process
    _claim(out, config)
    remove_stale_temporaries(out, *(join(out, split) for split in ("web", "curated", "eval")))
    planned = plan(
        n=config.n,
        seed=config.seed,
        noise=config.noise,
        curated=int(round(config.curated_fraction * config.n)),
        eval_per_class=config.eval_per_class,
        zipf=config.zipf,
        concepts=config.concepts,
    )
    total = len(planned.web) + len(planned.curated) + len(planned.eval)
    done, written, skipped, pending = 0, 0, 0, []
    for split, samples in (("web", planned.web), ("curated", planned.curated)):
        folder = join(out, split)
        fs, path = filesystem(folder)
        fs.makedirs(path, exist_ok=True)
        for index, start in enumerate(range(0, len(samples), config.samples_per_shard)):
            shard = samples[start : start + config.samples_per_shard]
            if shard_done(folder, index):
                skipped += 1
                done += len(shard)
            else:
                pending.append((folder, index, shard, config))
    if progress:
        progress(done, total)
    parallel = workers > 1 and len(pending) > 1
    with ProcessPoolExecutor(max_workers=workers) if parallel else contextlib.nullcontext() as pool:
        for count in (pool.map if parallel else map)(_write_web_shard, pending):
            written += 1
            done += count
            if progress:
                progress(done, total)
    for split in ("web", "curated"):
        write_sizes(join(out, split))
    eval_folder = join(out, "eval")
    # The eval set names the classes present only (all 64 by default), its labels numbered in that list.
    names, position = class_names(), {label: i for i, label in enumerate(planned.classes)}
    write_eval_set(
        eval_folder,
        images=[render(s.scene, config.image_size, "png") for s in planned.eval],
        labels=[position[s.label] for s in planned.eval],
        captions=[s.caption for s in planned.eval],
        classnames=[names[label] for label in planned.classes],
        templates=ZEROSHOT_TEMPLATES,
    )
    if progress:
        progress(total, total)
    return SynthSummary(
        folder=out,
        web=len(planned.web),
        curated=len(planned.curated),
        eval=len(planned.eval),
        shards_written=written,
        shards_skipped=skipped,
        noise=dict(Counter(s.noise for s in planned.web)),
        classes=len(planned.classes),
    )


def _write_web_shard(job: tuple[str, int, list[PlannedSample], SynthConfig]) -> int:
    folder, index, samples, config = job
    keys = (sample_key(index, row, config.samples_per_shard) for row in range(len(samples)))
    write_shard(folder, index, map(_record, samples, keys, [config] * len(samples)), EXTRA_FIELDS)
    return len(samples)


def _record(sample: PlannedSample, key: str, config: SynthConfig) -> ShardRecord:
    image = render(sample.scene, config.image_size, config.image_format, sample.quality)
    source, per_shard = sample.duplicate_of, config.samples_per_shard
    duplicate_of = sample_key(*divmod(source, per_shard), per_shard) if source >= 0 else None
    if sample.corrupt_seed >= 0:
        image = _corrupt(image, sample.corrupt_seed)
    scene = sample.scene
    return ShardRecord(
        key=key,
        caption=sample.caption,
        image=image,
        image_ext=config.image_format,
        url=f"synth://{config.seed}/{key}",
        width=config.image_size,
        height=config.image_size,
        extra={
            "noise": sample.noise,
            "label": sample.label,
            "shape": scene.shape,
            "colour": scene.colour,
            "size": scene.size,
            "position": scene.position,
            "background": scene.background,
            "duplicate_of": duplicate_of,
        },
    )


def _corrupt(image: bytes, seed: int) -> bytes:
    """What a broken server sends: a cut-off file, or bytes that were never an image."""
    rng = np.random.default_rng(seed)
    if rng.random() < 0.5:
        return image[: max(16, len(image) // 3)]
    return rng.integers(0, 256, size=len(image), dtype=np.uint8).tobytes()


def _claim(out: str, config: SynthConfig) -> None:
    """Record the settings in `out/synth.json`; refuse to mix two different sets in one folder."""
    fs, path = filesystem(out)
    fs.makedirs(path, exist_ok=True)
    recorded = asdict(config)
    if config.concepts is None:
        del recorded["concepts"]  # so a folder made before --concepts existed is still this one
    settings = json.dumps(recorded, indent=2, sort_keys=True)
    marker = join(out, "synth.json")
    if fs.exists(filesystem(marker)[1]):
        with fs.open(filesystem(marker)[1], "r") as handle:
            if handle.read() != settings:
                raise CurateError(
                    f"{out} holds a synthetic set made with other settings (see {marker}); "
                    "choose another folder or delete it"
                )
        return
    with atomic_open(marker, "w") as handle:
        handle.write(settings)
