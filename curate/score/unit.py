"""The unit of `curate score`: decoded batches in, one score file per shard out.

The local DataLoader loop and every Ray worker run `score_batches`, so both backends write the same bytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from curate.models import ImageTextModel
from curate.runtime import autocast
from curate.score.config import ScoreSummary
from curate.score.schema import NONFINITE, OK, cost_metadata, score_file, write_score_file
from curate.shards.batches import ShardBatch


def score_batches(
    batches: Iterable[ShardBatch],
    model: ImageTextModel,
    device: torch.device,
    precision: str,
    out: Path,
    summary: ScoreSummary,
    progress: Callable[[int], None] | None = None,
    started: float | None = None,
    resolution: int | None = None,
) -> None:
    """Embed `batches` and write each shard's score file as its last batch arrives.

    Batches of several shards may interleave (the local DataLoader's workers each own whole shards) as long
    as each shard's arrive in order. `progress(samples seen)` is called after every batch.

    Each file records what it cost (`curate.flops`, `curate.seconds`): one forward per embedded sample, and
    the wall time since the previous file was written, the first counted from `started` (a
    `time.perf_counter()` taken before the model was loaded), so the files of a run add up to all of it.

    `resolution`: encode the images at that many pixels (None: the model's own size); batches decoded
    with `model.preprocess_at(resolution)` arrive at that size already, so the tower resizes nothing.
    """
    resolution = encoding_resolution(model, resolution)
    metadata = score_metadata(model, resolution)
    per_sample = model.forward_flops(resolution)
    open_shards: dict[str, list] = {}
    seen = 0
    mark = time.perf_counter() if started is None else started
    with torch.no_grad():
        for batch in batches:
            parts = open_shards.setdefault(batch.shard, [])
            parts.append((batch, _embed(model, batch, device, precision, resolution)))
            seen += len(batch.keys)
            if batch.last:
                parts = open_shards.pop(batch.shard)
                if batch.damage:
                    # Not done: no file, so the next run retries the shard (once it is repaired). The time
                    # spent on it is counted in the next file written.
                    summary.damaged.append((batch.shard, batch.damage))
                else:
                    now = time.perf_counter()
                    cost = cost_metadata(per_sample * sum(len(b.images) for b, _ in parts), now - mark)
                    mark = now
                    _write(out, batch.shard, parts, model.embed_dim, {**metadata, **cost}, summary)
            if progress:
                progress(seen)


def encoding_resolution(model: ImageTextModel, resolution: int | None) -> int:
    """The pixels `model` encodes images at in this run: `resolution` if it can (else a one-line error
    naming the model), its own image size when None."""
    return model.image_size if resolution is None else model.check_resolution(resolution)


def score_metadata(model: ImageTextModel, resolution: int) -> dict[str, str]:
    """A score file's model metadata: the model's own, and the pixels its images were encoded at (always
    written, so a folder's files say which resolution they share even when it is the model's own)."""
    return {**model.metadata(), "curate.resolution": str(resolution)}


def _embed(model: ImageTextModel, batch: ShardBatch, device: torch.device, precision: str, resolution: int):
    if not len(batch.images):
        return None
    with autocast(precision, device):
        images, texts = model.encode(
            batch.images.to(device, non_blocking=True),
            batch.tokens.to(device, non_blocking=True),
            resolution,
        )
    # Stay on the device: the shard is copied to the host once, when it is written (one sync per shard).
    return images.half(), texts.half(), (images * texts).sum(-1)


def _write(
    out: Path, shard: str, parts: list, dim: int, metadata: dict[str, str], summary: ScoreSummary
) -> None:
    keys, captions, status, sha256 = [], [], [], []
    image_parts, text_parts, similarity_parts = [], [], []
    for batch, embedded in parts:
        keys += batch.keys
        captions += batch.captions
        status += batch.status
        sha256 += batch.sha256
        if embedded is not None:
            image_parts.append(embedded[0])
            text_parts.append(embedded[1])
            similarity_parts.append(embedded[2])
    valid = np.array([s == OK for s in status], dtype=bool)
    image_emb = np.zeros((len(keys), dim), np.float16)
    text_emb = np.zeros((len(keys), dim), np.float16)
    similarity = np.full(len(keys), np.nan, np.float32)
    if image_parts:
        image_emb[valid] = torch.cat(image_parts).cpu().numpy()
        text_emb[valid] = torch.cat(text_parts).cpu().numpy()
        similarity[valid] = torch.cat(similarity_parts).float().cpu().numpy()
    # A diverged model embeds NaN: such a row is a failure, so no later stage ever draws it.
    finite = np.isfinite(image_emb).all(1) & np.isfinite(text_emb).all(1) & np.isfinite(similarity)
    for row in np.flatnonzero(valid & ~finite):
        status[row] = NONFINITE
    valid &= finite
    path = score_file(out, shard)
    write_score_file(path, shard, keys, captions, status, image_emb, text_emb, similarity, metadata, sha256)
    summary.shards_done += 1
    summary.ok += int(valid.sum())
    summary.failed.update(s for s in status if s != OK)
