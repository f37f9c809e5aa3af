"""`curate score`: a reference model writes both embeddings of every sample to Parquet.

Config (`config.py`) → unit (`unit.py`: batches to score files, run by either backend) → driver
(`score_shards` below: what is pending, the backend, the one-model-per-folder check before any write).
"""

from __future__ import annotations

import time
from pathlib import Path

from torch.utils.data import DataLoader

from curate.fileio import basename, output_lock, output_path, remove_stale_temporaries
from curate.models import ImageTextModel, load_model
from curate.runtime import Progress, resolve_device, resolve_precision
from curate.score.config import ScoreConfig, ScoreSummary
from curate.score.ray_backend import score_on_ray
from curate.score.schema import (
    OK,
    ScoreFolder,
    ScoreMetadata,
    check_same_model,
    embeddings_array,
    embeddings_numpy,
    open_score_folder,
    score_file,
    score_schema,
    write_score_file,
)
from curate.score.unit import encoding_resolution, score_batches, score_metadata
from curate.shards.batches import ShardBatches, already_batched, single_threaded_worker
from curate.shards.paths import count_samples, expand_shards

__all__ = [
    "OK",
    "ScoreConfig",
    "ScoreFolder",
    "ScoreMetadata",
    "ScoreSummary",
    "embeddings_array",
    "embeddings_numpy",
    "open_score_folder",
    "score_file",
    "score_schema",
    "score_shards",
    "write_score_file",
]


def score_shards(
    shards: str | list[str],
    out: str,
    config: ScoreConfig,
    progress: Progress | None = None,
    model: ImageTextModel | None = None,
) -> ScoreSummary:
    """Write `out/{shard}.parquet` for every shard without one (all of them with `overwrite`).

    Each file is complete or absent (written under a temporary name, then renamed), so a killed run,
    re-run, produces exactly what an uninterrupted run would have. `model` (local backend only) skips
    loading `config.model`.
    """
    folder = output_path(out)
    with output_lock(folder):
        return _score_into(folder, shards, config, progress, model)


def _score_into(
    folder: Path,
    shards: str | list[str],
    config: ScoreConfig,
    progress: Progress | None,
    model: ImageTextModel | None,
) -> ScoreSummary:
    remove_stale_temporaries(folder)  # a killed run's half-written score files
    paths = expand_shards(shards)
    summary = ScoreSummary()
    pending = [p for p in paths if config.overwrite or not score_file(folder, basename(p)).exists()]
    summary.shards_skipped = len(paths) - len(pending)
    if not config.overwrite:
        check_same_model(folder, config.model, config.pretrained, resolution=config.resolution)
    if not pending:
        return summary
    if config.backend == "ray":
        if model is not None:
            raise ValueError("a preloaded model runs on the local backend only; Ray workers load their own")
        score_on_ray(pending, folder, config, summary, progress)
    else:
        _score_locally(pending, folder, config, summary, progress, model)
    return summary


def _score_locally(
    pending: list[str],
    folder: Path,
    config: ScoreConfig,
    summary: ScoreSummary,
    progress: Progress | None,
    model: ImageTextModel | None,
) -> None:
    """One model in this process; DataLoader workers decode whole shards in parallel."""
    start = time.perf_counter()
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    summary.device = f"{device.type} {precision}"
    if model is None:
        model = load_model(config.model, config.pretrained, device, config.allow_random_init, config.seed)
    resolution = encoding_resolution(model, config.resolution)
    if not config.overwrite:
        check_same_model(folder, config.model, config.pretrained, score_metadata(model, resolution))
    folder.mkdir(parents=True, exist_ok=True)
    # The workers resize straight to `resolution`: at a lower one they decode, crop and copy less too.
    preprocess = model.preprocess_at(resolution)
    loader = DataLoader(
        ShardBatches(pending, preprocess, model.tokenizer, config.batch_size, digests=True),
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
        loader,
        model,
        device,
        precision,
        folder,
        summary,
        progress and (lambda seen: progress(seen, total)),
        started=start,
        resolution=resolution,
    )
    summary.seconds = time.perf_counter() - scoring
