"""Artefacts for tests, written by the library's own writers (never a hand-made second schema)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.score.schema import OK, ScoreMetadata, score_file, write_score_file


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def write_scores(
    folder: str | Path,
    shard: str,
    keys: list[str],
    image: np.ndarray,
    text: np.ndarray,
    status: list[str] | None = None,
    model: str = "planted",
    scale: float = 10.0,
    bias: float = -10.0,
    captions: list[str] | None = None,
    extra: dict[str, str] | None = None,
) -> Path:
    """One score file as `curate score` writes it, for planted embeddings of a made-up model; `extra` adds
    file metadata (what scoring cost, `cost_metadata`; the checkpoint that scored it)."""
    status = status or [OK] * len(keys)
    metadata = ScoreMetadata(model, "", scale, bias, image.shape[1], 32, "test").as_strings()
    metadata.update(extra or {})
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = score_file(folder, shard)
    write_score_file(
        path,
        shard,
        keys,
        captions if captions is not None else [f"caption {k}" for k in keys],
        status,
        image.astype(np.float16),
        text.astype(np.float16),
        (image * text).sum(1),
        metadata,
    )
    return path


def write_manifest_rows(
    folder: str | Path,
    keys: list[str],
    shards: list[str] | str = "00000.tar",
    batches: list[int] | None = None,
) -> Path:
    """A manifest as `curate select` writes it, of the given rows (one batch unless `batches` says)."""
    from curate.select.manifest import MANIFEST_SCHEMA, write_manifest

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = len(keys)
    batches = batches if batches is not None else [0] * n
    table = pa.table(
        {
            "key": keys,
            "shard": [shards] * n if isinstance(shards, str) else shards,
            "batch": pa.array(batches, pa.int64()),
            "super_batch": pa.array(batches, pa.int64()),
            "chunk": pa.array([0] * n, pa.int32()),
            "score": pa.array([0.0] * n, pa.float32()),
            "sha256": pa.nulls(n, pa.string()),
        },
        schema=MANIFEST_SCHEMA,
    )
    write_manifest(folder, {}, [table])
    return folder


def write_keep_rows(folder: str | Path, scored: pa.Table, keys: list[str | None] | None = None) -> Path:
    """A keep-manifest as `curate dedup` writes it, keeping the score rows `scored` (key, shard, similarity),
    each in a group of its own; `keys` replaces their keys (a hostile file's)."""
    from curate.dedup.keep import write_keep

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = scored.num_rows
    rows = pa.table(
        {
            "key": scored["key"] if keys is None else pa.array(keys, pa.string()),
            "shard": scored["shard"],
            "similarity": scored["similarity"],
            "cluster": pa.array([0] * n, pa.int32()),
            "group_size": pa.array([1] * n, pa.int32()),
        }
    )
    return write_keep(folder, rows, {})
