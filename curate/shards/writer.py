"""Write shards in exactly img2dataset's layout, each file under a temporary name then renamed.

A shard is `NNNNN.tar` (image, caption and metadata of every successful sample), `NNNNN.parquet` (one row
per sample, failures included) and `NNNNN_stats.json`, written last: its presence means the shard is done.
`write_shard_files` is the one writer of that trio (synth through `write_shard`, export, download's retry
merge) and `write_tar` the one writer of a tar (eval sets too): fixed mtime, owner and mode, so the same
samples give byte-identical files.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import CurateError
from curate.fileio import atomic_open, basename, filesystem, join
from curate.shards.paths import folder_files
from curate.shards.schema import (
    CAPTION_EXTENSION,
    IMAGE_EXTENSIONS,
    METADATA_EXTENSION,
    SHARD_TABLE_SCHEMA,
    STATS_SUFFIX,
    SUCCESS,
    member_name,
    shard_name,
    shard_stats,
)

# (key, [(extension, bytes), ...]) per sample, in tar order; extension "" is a member named just `key`
Samples = Iterable[tuple[str, Iterable[tuple[str, bytes]]]]


@dataclass
class ShardRecord:
    """One row of a shard: a sample with its image, or a failure (image None) kept in the parquet only."""

    key: str
    caption: str | None
    image: bytes | None = None
    image_ext: str = "jpg"
    url: str | None = None
    status: str = SUCCESS
    error_message: str | None = None
    width: int | None = None
    height: int | None = None
    extra: dict = field(default_factory=dict)  # values of the writer's extra columns, also put in the .json


def shard_done(folder: str, index: int) -> bool:
    fs, path = filesystem(join(folder, f"{shard_name(index)}{STATS_SUFFIX}"))
    return fs.exists(path)


def write_shard_files(
    folder: str,
    name: str,
    samples: Samples,
    table: pa.Table | Callable[[], pa.Table],
    keep_stats: dict | None = None,
) -> dict:
    """Write `folder/{name}.tar` from `samples`, `{name}.parquet` from `table`, then `{name}_stats.json`
    (computed from the table's statuses, see `shard_stats`); return the stats.

    `table` may be a function, called once the samples are written: for a writer that learns the rows
    while it streams the samples. `keep_stats` holds fields of an earlier `_stats.json` to carry over
    (img2dataset's timings); the counts are always recomputed.
    """
    fs, fs_folder = filesystem(folder)
    fs.makedirs(fs_folder, exist_ok=True)
    stem = join(folder, name)
    write_tar(f"{stem}.tar", samples)
    table = table() if callable(table) else table
    with atomic_open(f"{stem}.parquet", "wb") as handle:
        pq.write_table(table, handle)
    stats = {**(keep_stats or {}), **shard_stats(table)}
    with atomic_open(f"{stem}{STATS_SUFFIX}", "w") as handle:  # last: its presence marks the shard done
        json.dump(stats, handle, indent=4)
    return stats


def write_tar(path: str, samples: Samples) -> int:
    """Write `samples` into the tar `path` atomically; return how many samples it holds."""
    count = 0
    with atomic_open(path, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
        for key, members in samples:
            check_key(key)
            for extension, data in members:
                add_tar_member(tar, member_name(key, extension), data)
            count += 1
    return count


def write_shard(
    folder: str, index: int, records: Iterable[ShardRecord], extra_fields: Sequence[pa.Field] = ()
) -> dict:
    """Write shard `index` of `folder` from `records`; return its stats (also written as `_stats.json`)."""
    schema = SHARD_TABLE_SCHEMA
    for extra in extra_fields:
        schema = schema.append(extra)
    rows: dict[str, list] = {name: [] for name in schema.names}

    def samples() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
        for record in records:
            check_key(record.key)  # failures too: their key is a parquet row
            meta = _metadata(record, extra_fields)
            for name in schema.names:
                rows[name].append(meta.get(name))
            if record.status != SUCCESS:
                continue
            if record.image is None:
                raise CurateError(f"sample {record.key} has status {SUCCESS!r} but no image")
            if record.image_ext not in IMAGE_EXTENSIONS:
                raise CurateError(f"image extension {record.image_ext!r} is not one of {IMAGE_EXTENSIONS}")
            yield (
                record.key,
                [
                    (record.image_ext, record.image),
                    (CAPTION_EXTENSION, (record.caption or "").encode("utf-8")),
                    (METADATA_EXTENSION, json.dumps(meta, indent=4).encode("utf-8")),
                ],
            )

    def table() -> pa.Table:  # complete once the samples have been written
        return pa.Table.from_pydict(rows, schema=schema)

    return write_shard_files(folder, shard_name(index), samples(), table)


def write_sizes(folder: str) -> dict[str, int]:
    """Write `sizes.json` ({"00000.tar": samples, ...}) from every finished shard's stats, for open_clip."""
    sizes = {}
    for stats_path in folder_files(folder, STATS_SUFFIX):
        fs, path = filesystem(stats_path)
        with fs.open(path, "r") as handle:
            sizes[f"{basename(stats_path).removesuffix(STATS_SUFFIX)}.tar"] = json.load(handle)["successes"]
    with atomic_open(join(folder, "sizes.json"), "w") as handle:
        json.dump(sizes, handle, indent=4)
    return sizes


def _metadata(record: ShardRecord, extra_fields: Sequence[pa.Field]) -> dict:
    meta = {
        "key": record.key,
        "caption": record.caption,
        "url": record.url,
        "status": record.status,
        "error_message": record.error_message,
        "width": record.width,
        "height": record.height,
    }
    for extra in extra_fields:
        meta[extra.name] = record.extra.get(extra.name)
    unknown = set(record.extra) - set(meta)
    if unknown:
        raise CurateError(f"sample {record.key}: metadata {sorted(unknown)} has no column in this writer")
    return meta


def check_key(key: str) -> None:
    if not key or "." in key or "/" in key:
        raise CurateError(
            f"sample key {key!r} cannot be written: keys must be non-empty and contain no '.' or '/' "
            "(webdataset reads the first dot as the start of the extension)"
        )


def add_tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0  # fixed, so the same records give the same bytes
    tar.addfile(info, io.BytesIO(data))
