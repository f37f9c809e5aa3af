"""The img2dataset shard layout, defined once for the writer, the readers and the tests."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Container

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
FAILED_TO_RESIZE = "failed_to_resize"  # img2dataset's status of a row whose image would not resize
OK = "ok"  # a sample read and decoded; any other per-sample status names why not (score files use it)
SHARD_DIGITS = 5
STATS_SUFFIX = "_stats.json"  # NNNNN_stats.json, written last: its presence means the shard is done


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


def image_extension(extensions: Container[str]) -> str | None:
    """The extension of a sample's image among its members' (the first of IMAGE_EXTENSIONS present): the
    member that `score` hashes and `export` checks."""
    return next((extension for extension in IMAGE_EXTENSIONS if extension in extensions), None)


def is_safe_key(key: str) -> bool:
    """A key that names one file in one folder: not empty, no path separator, no `.` or `..`. Webdataset
    allows `dir/key`, but curate writes keys back as member names, so such keys are refused where they
    enter (the readers count them as `unsafe_key`)."""
    return bool(key) and "/" not in key and "\\" not in key and key not in (".", "..")


def member_name(key: str, extension: str) -> str:
    """The tar member name of `key`'s `extension` (the inverse of `split_member_name`)."""
    return f"{key}.{extension}" if extension else key


def shard_stats(table: pa.Table) -> dict:
    """img2dataset's `_stats.json` of a shard whose parquet is `table` (one row per input row).

    `status_dict` counts successes under "success" and each failure under its error message (its status
    when it has none), as img2dataset does. A row without a status (or a table without the column, such as
    a hand-made shard's) is a success: its sample is in the tar.
    """
    rows = table.num_rows
    statuses = table["status"].to_pylist() if "status" in table.column_names else [None] * rows
    messages = table["error_message"].to_pylist() if "error_message" in table.column_names else [None] * rows
    statuses = [SUCCESS if status is None else status for status in statuses]
    successes = statuses.count(SUCCESS)
    failed_to_resize = statuses.count(FAILED_TO_RESIZE)
    reasons = Counter(
        status if status == SUCCESS else message or status
        for status, message in zip(statuses, messages, strict=True)
    )
    return {
        "count": rows,
        "successes": successes,
        "failed_to_download": rows - successes - failed_to_resize,
        "failed_to_resize": failed_to_resize,
        "status_dict": dict(sorted(reasons.items())),
    }
