"""Write shards in exactly img2dataset's layout, each file under a temporary name then renamed.

A shard is `NNNNN.tar` (image, caption and metadata of every successful sample), `NNNNN.parquet` (one row
per sample, failures included) and `NNNNN_stats.json`, written last: its presence means the shard is done.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import CurateError
from curate.fileio import atomic_open, filesystem, join
from curate.shards.schema import IMAGE_EXTENSIONS, SHARD_TABLE_SCHEMA, SUCCESS, shard_name


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
    fs, path = filesystem(join(folder, f"{shard_name(index)}_stats.json"))
    return fs.exists(path)


def write_shard(
    folder: str, index: int, records: Iterable[ShardRecord], extra_fields: Sequence[pa.Field] = ()
) -> dict:
    """Write shard `index` of `folder` from `records`; return its stats (also written as `_stats.json`).

    The tar is deterministic (fixed mtime, owner and mode), so the same records give byte-identical files.
    """
    schema = SHARD_TABLE_SCHEMA
    for extra in extra_fields:
        schema = schema.append(extra)
    fs, fs_folder = filesystem(folder)
    fs.makedirs(fs_folder, exist_ok=True)
    stem = join(folder, shard_name(index))
    stats = {"count": 0, "successes": 0, "failed_to_download": 0, "failed_to_resize": 0}
    statuses: Counter = Counter()
    rows = {name: [] for name in schema.names}
    with atomic_open(f"{stem}.tar", "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
        for record in records:
            _check_key(record.key)
            meta = _metadata(record, extra_fields)
            for name in schema.names:
                rows[name].append(meta.get(name))
            stats["count"] += 1
            statuses[
                record.status if record.status == SUCCESS else record.error_message or record.status
            ] += 1
            if record.image is None or record.status != SUCCESS:
                stats["failed_to_download"] += 1
                continue
            stats["successes"] += 1
            if record.image_ext not in IMAGE_EXTENSIONS:
                raise CurateError(f"image extension {record.image_ext!r} is not one of {IMAGE_EXTENSIONS}")
            add_tar_member(tar, f"{record.key}.{record.image_ext}", record.image)
            add_tar_member(tar, f"{record.key}.txt", (record.caption or "").encode("utf-8"))
            add_tar_member(tar, f"{record.key}.json", json.dumps(meta, indent=4).encode("utf-8"))
    with atomic_open(f"{stem}.parquet", "wb") as handle:
        pq.write_table(pa.Table.from_pydict(rows, schema=schema), handle)
    stats["status_dict"] = dict(sorted(statuses.items()))
    with atomic_open(f"{stem}_stats.json", "w") as handle:
        json.dump(stats, handle, indent=4)
    return stats


def write_sizes(folder: str) -> dict[str, int]:
    """Write `sizes.json` ({"00000.tar": samples, ...}) from every finished shard's stats, for open_clip."""
    fs, path = filesystem(folder)
    sizes = {}
    for stats_path in sorted(fs.glob(f"{path.rstrip('/')}/*_stats.json")):
        name = stats_path.rsplit("/", 1)[-1].removesuffix("_stats.json")
        with fs.open(stats_path, "r") as handle:
            sizes[f"{name}.tar"] = json.load(handle)["successes"]
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


def _check_key(key: str) -> None:
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
