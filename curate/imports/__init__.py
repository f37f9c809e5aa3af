"""`curate import`: a score folder from the embeddings a pool ships, no image downloaded and no model run.

Config (`config.py`) → the layouts (`datacomp.py`, `clip_retrieval.py`: pool files, each read as one aligned
chunk, `pool.py`) → the calibration of (t, b) (`calibrate.py`) → unit (`unit.py`: one pool file to one score
file) → driver (`import_pool` below: what is pending, (t, b) fitted once or read back from the folder, the
downloaded shards matched (`downloaded.py`), the keys checked unique over the folder).

Each pool file gives one score file of the same name, written under a temporary name and renamed, so a
killed import, rerun, skips the files that are done and writes the rest exactly as one run would (only
`curate.seconds` differs). Memory is one pool file's rows (its arrays, their normalised float16 copies and
the Parquet table) plus, with --shards, the index of the downloaded samples.
"""

from __future__ import annotations

import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import torch

from curate import __version__
from curate.errors import CurateError
from curate.fileio import absolute, output_lock, output_path, remove_stale_temporaries
from curate.imports.calibrate import BATCH_SIZE, BATCHES, Calibration, calibrate
from curate.imports.clip_retrieval import clip_retrieval_files, read_clip_retrieval
from curate.imports.config import DATACOMP_EMBEDDINGS, ImportConfig, ImportSummary
from curate.imports.datacomp import datacomp_files, read_datacomp
from curate.imports.downloaded import downloaded_samples
from curate.imports.pool import PoolChunk, PoolFile, row_counts
from curate.imports.unit import import_chunk, normalised
from curate.runtime import Progress
from curate.score.schema import (
    IMPORTED_METADATA_KEY,
    ScoreMetadata,
    cost_metadata,
    open_score_folder,
    score_file,
)

__all__ = [
    "CALIBRATION_METADATA_KEY",
    "KEYS_METADATA_KEY",
    "Calibration",
    "ImportConfig",
    "ImportSummary",
    "import_pool",
]

CALIBRATION_METADATA_KEY = "curate.calibration"  # how (t, b) were fitted (Calibration.as_json)
KEYS_METADATA_KEY = "curate.import_keys"  # what the keys are: a resumed import must name its rows alike
CALIBRATION_FILES = 4  # pool files the calibration rows are drawn from
MIN_SCALE = 1.0  # a fitted t at or below it: matched pairs are no more similar than unmatched ones


def import_pool(pool: str, out: str, config: ImportConfig, progress: Progress | None = None) -> ImportSummary:
    """Write `out/{pool file}.parquet` for every pool file without one; see the module docstring."""
    folder = output_path(out)
    with output_lock(folder):
        return _import_into(pool, folder, config, progress)


def _import_into(pool: str, folder: Path, config: ImportConfig, progress: Progress | None) -> ImportSummary:
    start = time.perf_counter()
    remove_stale_temporaries(folder)  # a killed run's half-written score files
    files = _pool_files(pool, config)
    pending = [file for file in files if not score_file(folder, file.name).exists()]
    summary = ImportSummary(files_skipped=len(files) - len(pending))
    existing = _existing(folder, config)
    if existing is not None:
        summary.calibration, dim = existing
        summary.calibration_reused = True
    if not pending:
        return summary
    if existing is None:
        summary.calibration, dim = _calibrate(pool, files, config)
    metadata = _metadata(config, summary.calibration, dim)
    downloaded = downloaded_samples(config.shards, config.key_column) if config.shards else None
    folder.mkdir(parents=True, exist_ok=True)
    total, done = row_counts(pending), 0
    mark = start  # each file's seconds run from the previous one's, the first's from the start: they add up
    for file in pending:
        chunk = _read(file, config, dim)
        now = time.perf_counter()
        cost = cost_metadata(0.0, now - mark)  # zero FLOPs: the pool's publisher ran the model, not the user
        mark = now
        path = str(score_file(folder, file.name))
        import_chunk(chunk, path, config.key_column, {**metadata, **cost}, downloaded, summary)
        done += chunk.table.num_rows
        del chunk  # before the next file is read: one pool file's rows in memory at a time
        if progress:
            progress(done, total)
    _check_unique_keys(folder, config)
    summary.seconds = time.perf_counter() - start
    return summary


def _pool_files(pool: str, config: ImportConfig) -> list[PoolFile]:
    return datacomp_files(pool) if config.source == "datacomp" else clip_retrieval_files(pool)


def _read(file: PoolFile, config: ImportConfig, dim: int | None) -> PoolChunk:
    if config.source == "datacomp":
        return read_datacomp(file, config.embeddings)
    return read_clip_retrieval(file, dim)


def _existing(folder: Path, config: ImportConfig) -> tuple[Calibration, int] | None:
    """The calibration and D of the import the folder already holds (None when it holds no score file);
    a folder of another model's scores is refused, so one folder stays one model."""
    if not folder.is_dir() or not any(folder.glob("*.parquet")):
        return None
    scores = open_score_folder(folder, "--output")
    raw = {k.decode(): v.decode() for k, v in (pq.read_schema(scores.files[0]).metadata or {}).items()}
    if scores.metadata.model != config.reference or CALIBRATION_METADATA_KEY not in raw:
        raise CurateError(
            f"{folder} holds scores of {scores.metadata.model}, not {config.reference}; import into "
            "another folder"
        )
    if raw.get(KEYS_METADATA_KEY) != _keys(config):
        raise CurateError(
            f"{folder} was imported with keys {raw.get(KEYS_METADATA_KEY)!r}, this run names them "
            f"{_keys(config)!r} (--key, --shards): import into another folder"
        )
    return Calibration.from_json(raw[CALIBRATION_METADATA_KEY]), scores.metadata.embed_dim


def _keys(config: ImportConfig) -> str:
    """What a row's key is (`curate.import_keys`), from the pool's column and the shards matched."""
    matched = f", or its sample's key in {absolute(config.shards)}" if config.shards else ""
    return f"the pool's {config.key_column}{matched}"


def _calibrate(pool: str, files: list[PoolFile], config: ImportConfig) -> tuple[Calibration, int]:
    """(t, b) fitted on rows of a few seeded pool files (calibrate.py), and the pool's D."""
    rng = np.random.default_rng(config.seed)
    chosen = sorted(rng.choice(len(files), size=min(CALIBRATION_FILES, len(files)), replace=False))
    wanted = BATCHES * BATCH_SIZE  # rows per file, at most: enough for every batch from any one file
    images, texts, dim = [], [], None
    for index in chosen:
        chunk = _read(files[index], config, dim)
        dim = chunk.image.shape[1]
        rows = np.sort(rng.permutation(chunk.table.num_rows)[:wanted])
        image, image_finite = normalised(chunk.image[rows])
        text, text_finite = normalised(chunk.text[rows])
        finite = image_finite & text_finite
        images.append(image[finite])
        texts.append(text[finite])
    image, text = np.concatenate(images), np.concatenate(texts)
    if len(image) < 2:
        raise CurateError(f"{pool}: fewer than 2 rows with finite embeddings to calibrate t and b on")
    calibration = calibrate(torch.from_numpy(image), torch.from_numpy(text), config.seed)
    if calibration.logit_scale <= MIN_SCALE:
        raise CurateError(
            f"{pool}: its image and text embeddings do not match each other (fitted t = "
            f"{calibration.logit_scale:.2f}: a row's two embeddings are no closer than any two): are the "
            "embedding arrays in the metadata's row order?"
        )
    return calibration, dim


def _metadata(config: ImportConfig, calibration: Calibration, dim: int) -> dict[str, str]:
    image_size = DATACOMP_EMBEDDINGS[config.embeddings][2] if config.source == "datacomp" else 0
    metadata = ScoreMetadata(
        model=config.reference,
        pretrained="",
        logit_scale=calibration.logit_scale,
        logit_bias=calibration.logit_bias,
        embed_dim=dim,
        image_size=image_size,  # 0: not known (clip-retrieval's files do not say)
        version=__version__,
    ).as_strings()
    return {
        **metadata,
        IMPORTED_METADATA_KEY: config.imported,
        CALIBRATION_METADATA_KEY: calibration.as_json(),
        KEYS_METADATA_KEY: _keys(config),
    }


def _check_unique_keys(folder: Path, config: ImportConfig) -> None:
    """Refuse a folder in which one key names two rows (each file was checked on its own as it was read;
    this is the check across files), which select would otherwise silently deduplicate."""
    files = [str(path) for path in sorted(folder.glob("*.parquet"))]
    with duckdb.connect() as con:
        repeated = con.execute(
            "SELECT key, count(*) AS n FROM read_parquet(?) GROUP BY key HAVING n > 1 ORDER BY key LIMIT 1",
            [files],
        ).fetchone()
    if repeated:
        hint = " (import with --key url?)" if config.source == "clip-retrieval" else ""
        raise CurateError(
            f"{folder}: key {repeated[0]!r} names {repeated[1]} rows; a score folder's keys must be "
            f"unique{hint}"
        )
