"""The manifest (DESIGN.md, "Manifest"): the chosen samples, defined once for the writer, readers and tests.

| key, shard   | string  | which sample (`shard` is the source tar's file name, e.g. 00003.tar)  |
| super_batch  | int64   | index of the super-batch it was drawn from                           |
| chunk        | int32   | which of the N chunks selected it (0 = first)                        |
| score        | float32 | its conditional criterion score when it was drawn                    |

Rows are in draw order: super-batch by super-batch, and within one in the order the sampler drew them.
The file's key/value metadata (`curate.*`) repeats the selection parameters and, when known, where the
source shards live (`curate.shards`), which `curate export` uses when it is not given `--shards`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import CurateError

MANIFEST_FILE = "manifest.parquet"
SUMMARY_FILE = "summary.json"
SHARDS_METADATA_KEY = "curate.shards"

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string()),
        pa.field("shard", pa.string()),
        pa.field("super_batch", pa.int64()),
        pa.field("chunk", pa.int32()),
        pa.field("score", pa.float32()),
    ]
)

# Fixed writer settings: together with a deterministic row order they make the file byte-identical run to
# run (pyarrow stamps only its version, never a time).
WRITER_OPTIONS = {"compression": "zstd", "compression_level": 3, "write_statistics": True}


def manifest_writer(handle, metadata: dict[str, str]) -> pq.ParquetWriter:
    """A ParquetWriter of MANIFEST_SCHEMA into `handle`; each `write_table` call adds one row group."""
    return pq.ParquetWriter(handle, MANIFEST_SCHEMA.with_metadata(metadata), **WRITER_OPTIONS)


def manifest_path(manifest: str | Path) -> Path:
    """`MANIFEST/manifest.parquet` for a manifest folder; a path to the file itself is accepted too."""
    path = Path(manifest)
    if path.is_dir():
        path = path / MANIFEST_FILE
    if not path.is_file():
        raise CurateError(f"no manifest at {manifest} (expected {MANIFEST_FILE}, written by curate select)")
    return path


def read_manifest(manifest: str | Path, columns: list[str] | None = None) -> pa.Table:
    """The manifest's rows, checked against MANIFEST_SCHEMA."""
    path = manifest_path(manifest)
    try:
        table = pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowInvalid) as error:
        raise CurateError(f"cannot read manifest {path}: {str(error).splitlines()[0]}") from None
    expected = MANIFEST_SCHEMA if columns is None else pa.schema([MANIFEST_SCHEMA.field(c) for c in columns])
    if not table.schema.remove_metadata().equals(expected):
        raise CurateError(f"{path} is not a curate manifest (columns {table.schema.names})")
    return table


def manifest_metadata(manifest: str | Path) -> dict[str, str]:
    """The manifest's `curate.*` file metadata (selection parameters, `curate.shards` when recorded)."""
    raw = pq.read_schema(manifest_path(manifest)).metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items() if k.startswith(b"curate.")}


def read_summary(manifest: str | Path) -> dict:
    path = manifest_path(manifest).parent / SUMMARY_FILE
    if not path.is_file():
        raise CurateError(f"no {SUMMARY_FILE} beside {manifest_path(manifest)}")
    return json.loads(path.read_text())
