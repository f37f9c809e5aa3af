"""The unit of `curate synth`: one shard of planned samples (web or curated) rendered and written, run in
this process or in a worker of the driver's pool."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from curate.shards import ShardRecord, sample_key, write_shard
from curate.synth.config import SynthConfig
from curate.synth.plan import PlannedSample
from curate.synth.scenes import render

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


def write_planned_shard(job: tuple[str, int, list[PlannedSample], SynthConfig]) -> int:
    """Write shard `index` of `folder` from its planned samples; return how many. One tuple argument, so a
    process pool can map it over the pending shards."""
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
