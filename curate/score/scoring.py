"""`curate score`: embed every sample of every shard with a reference model, one score file per shard."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader

from curate.backends.ray_cluster import RayConfig, check_backend
from curate.batches import ShardBatch, ShardBatches, already_batched, single_threaded_worker
from curate.errors import CurateError
from curate.fileio import atomic_open
from curate.models import ImageTextModel, load_model
from curate.runtime import PRECISIONS, autocast, resolve_device, resolve_precision
from curate.score.schema import OK, ScoreMetadata, embeddings_array, score_file, score_schema
from curate.shards.paths import count_samples, expand_shards


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
    backend: str = "local"
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise CurateError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.workers < 0:
            raise CurateError(f"--workers must be 0 or more, got {self.workers}")
        if self.precision not in PRECISIONS:
            raise CurateError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        check_backend(self.backend, self.ray)


@dataclass
class ScoreSummary:
    shards_done: int = 0
    shards_skipped: int = 0
    ok: int = 0
    failed: Counter = field(default_factory=Counter)  # status -> samples
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (shard, why its tar ended early)
    seconds: float = 0.0  # scoring only: model loading and worker start-up are in startup_seconds
    startup_seconds: float = 0.0
    device: str = ""

    @property
    def samples(self) -> int:
        return self.ok + sum(self.failed.values())

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0

    def add(self, other: ScoreSummary) -> None:
        """Count another worker's shards into this summary."""
        self.shards_done += other.shards_done
        self.ok += other.ok
        self.failed.update(other.failed)
        self.damaged += other.damaged


def score_shards(
    shards: str | list[str],
    out: str,
    config: ScoreConfig,
    progress: Callable[[int, int | None], None] | None = None,
    model: ImageTextModel | None = None,
) -> ScoreSummary:
    """Write `out/{shard}.parquet` for every shard without one (all of them with `overwrite`).

    Each file is complete or absent (written under a temporary name, then renamed), so a killed run,
    re-run, produces exactly what an uninterrupted run would have. `model` (local backend only) skips
    loading `config.model`.
    """
    paths = expand_shards(shards)
    summary = ScoreSummary()
    pending = [p for p in paths if config.overwrite or not score_file(out, _name(p)).exists()]
    summary.shards_skipped = len(paths) - len(pending)
    if summary.shards_skipped:
        _check_same_model(out, next(p for p in paths if p not in pending), config)
    if not pending:
        return summary
    if config.backend == "ray":
        if model is not None:
            raise ValueError("a preloaded model runs on the local backend only; Ray workers load their own")
        from curate.score.ray_backend import score_on_ray

        score_on_ray(pending, out, config, summary, progress)
    else:
        _score_locally(pending, out, config, summary, progress, model)
    return summary


def _score_locally(
    pending: list[str],
    out: str,
    config: ScoreConfig,
    summary: ScoreSummary,
    progress: Callable[[int, int | None], None] | None,
    model: ImageTextModel | None,
) -> None:
    """One model in this process; DataLoader workers decode whole shards in parallel."""
    start = time.perf_counter()
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    summary.device = f"{device.type} {precision}"
    if model is None:
        model = load_model(config.model, config.pretrained, device, config.allow_random_init)
    Path(out).mkdir(parents=True, exist_ok=True)
    loader = DataLoader(
        ShardBatches(pending, model.preprocess, model.tokenizer, config.batch_size),
        batch_size=None,  # the dataset batches within shards itself
        num_workers=min(config.workers, len(pending)),
        worker_init_fn=single_threaded_worker,
        pin_memory=device.type == "cuda",
        collate_fn=already_batched,
    )
    total = count_samples(pending)
    scoring = time.perf_counter()
    summary.startup_seconds = scoring - start
    score_batches(
        loader, model, device, precision, out, summary, progress and (lambda seen: progress(seen, total))
    )
    summary.seconds = time.perf_counter() - scoring


def score_batches(
    batches: Iterable[ShardBatch],
    model: ImageTextModel,
    device: torch.device,
    precision: str,
    out: str,
    summary: ScoreSummary,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Embed `batches` and write each shard's score file as its last batch arrives.

    Batches of several shards may interleave (the local DataLoader's workers each own whole shards) as long
    as each shard's arrive in order. The local loop and every Ray worker run this, so both backends write
    the same bytes. `progress(samples seen)` is called after every batch.
    """
    schema = score_schema(model.embed_dim, model.metadata())
    open_shards: dict[str, list] = {}
    seen = 0
    with torch.no_grad():
        for batch in batches:
            parts = open_shards.setdefault(batch.shard, [])
            parts.append((batch, _embed(model, batch, device, precision)))
            seen += len(batch.keys)
            if batch.last:
                _write(out, batch.shard, open_shards.pop(batch.shard), schema, summary)
            if progress:
                progress(seen)


def _embed(model: ImageTextModel, batch: ShardBatch, device: torch.device, precision: str):
    if not len(batch.images):
        return None
    with autocast(precision, device):
        images, texts = model.encode(
            batch.images.to(device, non_blocking=True), batch.tokens.to(device, non_blocking=True)
        )
    # Stay on the device: the shard is copied to the host once, when it is written (one sync per shard).
    return images.half(), texts.half(), (images * texts).sum(-1)


def _write(out: str, shard: str, parts: list, schema: pa.Schema, summary: ScoreSummary) -> None:
    keys, captions, status = [], [], []
    image_parts, text_parts, similarity_parts = [], [], []
    for batch, embedded in parts:
        keys += batch.keys
        captions += batch.captions
        status += batch.status
        if embedded is not None:
            image_parts.append(embedded[0])
            text_parts.append(embedded[1])
            similarity_parts.append(embedded[2])
        if batch.damage:
            summary.damaged.append((shard, batch.damage))
    valid = np.array([s == OK for s in status], dtype=bool)
    dim = schema.field("image_emb").type.list_size
    image_emb = np.zeros((len(keys), dim), np.float16)
    text_emb = np.zeros((len(keys), dim), np.float16)
    similarity = np.full(len(keys), np.nan, np.float32)
    if image_parts:
        image_emb[valid] = torch.cat(image_parts).cpu().numpy()
        text_emb[valid] = torch.cat(text_parts).cpu().numpy()
        similarity[valid] = torch.cat(similarity_parts).float().cpu().numpy()
    table = pa.table(
        {
            "key": pa.array(keys, pa.string()),
            "shard": pa.array([shard] * len(keys), pa.string()),
            "caption": pa.array(captions, pa.string()),
            "image_emb": embeddings_array(image_emb, valid),
            "text_emb": embeddings_array(text_emb, valid),
            "similarity": pa.array(similarity, pa.float32(), mask=~valid),
            "status": pa.array(status, pa.string()),
        },
        schema=schema,
    )
    with atomic_open(str(score_file(out, shard)), "wb") as handle:
        pq.write_table(table, handle)
    summary.shards_done += 1
    summary.ok += int(valid.sum())
    summary.failed.update(s for s in status if s != OK)


def _check_same_model(out: str, done_shard: str, config: ScoreConfig) -> None:
    """Resuming with another model would mix two models' embeddings in one folder: refuse."""
    existing = ScoreMetadata.read(score_file(out, _name(done_shard)))
    if (existing.model, existing.pretrained) != (config.model, config.pretrained or ""):
        raise CurateError(
            f"{out} holds scores by --model {existing.model} --pretrained '{existing.pretrained}'; "
            "score into another folder or pass --overwrite"
        )


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]
