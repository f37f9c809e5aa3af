"""The img2dataset shard layout, defined once for the writer, the readers and the tests."""

from __future__ import annotations

import math

import pyarrow as pa

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTENSION = "txt"
METADATA_EXTENSION = "json"

# The columns img2dataset writes in every NNNNN.parquet, in its order; `original_*`, `exif` and
# `sha256` are optional there, and so they are here (pass them as extra fields).
SHARD_TABLE_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("url", pa.string()),
        pa.field("status", pa.string()),
        pa.field("error_message", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
    ]
)

SUCCESS = "success"  # img2dataset's status of a downloaded row
OK = "ok"  # a sample read and decoded; any other per-sample status names why not (score files use it)
SHARD_DIGITS = 5


def shard_name(index: int, digits: int = SHARD_DIGITS) -> str:
    """`00042` for shard 42: the stem of `00042.tar`, `00042.parquet` and `00042_stats.json`."""
    return f"{index:0{digits}d}"


def sample_key(shard_index: int, row: int, samples_per_shard: int, digits: int = SHARD_DIGITS) -> str:
    """img2dataset's key: shard index, then the row zero-padded to the digits of samples_per_shard."""
    row_digits = max(1, math.ceil(math.log10(samples_per_shard)))
    return f"{shard_index * 10**row_digits + row:0{digits + row_digits}d}"


def split_member_name(name: str) -> tuple[str, str]:
    """Split a tar member name into (key, extension) at the first dot of its base name, as webdataset does."""
    folder, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    key = f"{folder}/{stem}" if folder else stem
    return key, extension.lower() if dot else ""
