"""The score file (DESIGN.md, "Scores"): one Parquet per input shard, defined once for writer and readers.

| key, shard, caption | string | which sample, as in the shard                            |
| image_emb, text_emb | fixed_size_list<float16>[D] | L2-normalised embeddings (null if not ok) |
| similarity          | float32 | cosine(image_emb, text_emb), the classic "CLIP score"   |
| status              | string  | "ok", or why the sample could not be scored             |

File metadata `curate.*` holds the model's name, tag, t (logit_scale, not log t), b, embed_dim, image size
and the curate version: selection rebuilds the reference's pair losses from these alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import CurateError
from curate.shards.schema import OK

__all__ = [
    "OK",
    "METADATA_KEYS",
    "ScoreMetadata",
    "embeddings_array",
    "embeddings_numpy",
    "score_file",
    "score_schema",
]
METADATA_KEYS = (
    "curate.model",
    "curate.pretrained",
    "curate.logit_scale",
    "curate.logit_bias",
    "curate.embed_dim",
    "curate.image_size",
    "curate.version",
)


def score_schema(embed_dim: int, metadata: dict[str, str] | None = None) -> pa.Schema:
    embedding = pa.list_(pa.float16(), embed_dim)
    schema = pa.schema(
        [
            pa.field("key", pa.string()),
            pa.field("shard", pa.string()),
            pa.field("caption", pa.string()),
            pa.field("image_emb", embedding),
            pa.field("text_emb", embedding),
            pa.field("similarity", pa.float32()),
            pa.field("status", pa.string()),
        ]
    )
    return schema.with_metadata(metadata) if metadata else schema


def score_file(scores: str | Path, shard: str) -> Path:
    """`SCORES/00042.parquet` for shard `00042.tar`."""
    return Path(scores) / f"{shard.removesuffix('.tar')}.parquet"


def embeddings_array(values: np.ndarray, valid: np.ndarray) -> pa.FixedSizeListArray:
    """(N, D) float16 rows -> a fixed_size_list column, null where `valid` is False."""
    flat = pa.array(np.ascontiguousarray(values, dtype=np.float16).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1], mask=pa.array(~valid))


def embeddings_numpy(column: pa.ChunkedArray | pa.FixedSizeListArray) -> np.ndarray:
    """A fixed_size_list<float16> column as an (N, D) float16 array, nulls as zero rows.

    Reads the value buffer directly: pyarrow's own float16 conversion is several times slower.
    """
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    dim = column.type.list_size
    parts = []
    for chunk in chunks:
        values = chunk.values  # includes the slots of null rows, so rows stay aligned
        buffer = values.buffers()[1]
        flat = np.frombuffer(buffer, dtype=np.float16, count=len(values) + values.offset)[values.offset :]
        parts.append(flat.reshape(-1, dim)[chunk.offset : chunk.offset + len(chunk)])
    return np.concatenate(parts) if parts else np.zeros((0, dim), np.float16)


@dataclass(frozen=True)
class ScoreMetadata:
    model: str
    pretrained: str
    logit_scale: float
    logit_bias: float
    embed_dim: int
    image_size: int
    version: str

    @classmethod
    def read(cls, path: str | Path) -> ScoreMetadata:
        try:
            raw = pq.read_schema(path).metadata or {}
        except (OSError, pa.ArrowInvalid) as error:
            raise CurateError(f"cannot read score file {path}: {str(error).splitlines()[0]}") from None
        meta = {k.decode(): v.decode() for k, v in raw.items() if k.decode().startswith("curate.")}
        missing = [k for k in METADATA_KEYS if k not in meta]
        if missing:
            raise CurateError(f"{path} is not a curate score file (no {', '.join(missing)} in its metadata)")
        return cls(
            model=meta["curate.model"],
            pretrained=meta["curate.pretrained"],
            logit_scale=float(meta["curate.logit_scale"]),
            logit_bias=float(meta["curate.logit_bias"]),
            embed_dim=int(meta["curate.embed_dim"]),
            image_size=int(meta["curate.image_size"]),
            version=meta["curate.version"],
        )
