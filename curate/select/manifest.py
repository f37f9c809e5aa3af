"""The manifest (DESIGN.md, "Manifest"): the chosen samples, defined once for the writer, readers and tests.

| key, shard   | string  | which sample (`shard` is the source tar's file name, e.g. 00003.tar)  |
| batch        | int64   | the training step it belongs to, 0..S-1 (unique across passes)       |
| super_batch  | int64   | index of the super-batch it was drawn from (-1: a global filter)     |
| chunk        | int32   | which of the N chunks selected it (0 = first)                        |
| score        | float32 | its conditional criterion score when it was drawn                    |
| sha256       | string  | hex digest of its image as scored, which `export` checks it copies   |

Rows are in training order: batch by batch, and within one in the order the sampler drew them. A JEST (or
per-super-batch baseline) selection draws one batch from each super-batch, so there `batch` equals
`super_batch`; clipscore and negclip keep a global top share of the crawl and cut their batches from a seeded
shuffle of it, so there `super_batch` is -1. A selection of several passes (`select --steps`) may repeat a
key in different batches, never within one. Manifests written before the `batch` column existed (one pass)
read as if it equalled `super_batch`, and those from before `sha256` with nulls there.
The file's key/value metadata (`curate.*`) repeats the selection parameters and, when known, where the
source shards live (`curate.shards`), which `curate export` uses when it is not given `--shards`, and the
score folders it read (`curate.scores`, `curate.learner_scores`), which a learner's cost follows upstream.
`summary.json` sits beside it (its content is built in `select/summary.py`). Manifest folders are local.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterable
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from curate import __version__
from curate.errors import CurateError, first_line
from curate.fileio import absolute, atomic_open, local_path
from curate.score.schema import ScoreFolder
from curate.select.config import SelectConfig

MANIFEST_FILE = "manifest.parquet"
SUMMARY_FILE = "summary.json"
SHARDS_METADATA_KEY = "curate.shards"
SCORES_METADATA_KEY = "curate.scores"
LEARNER_SCORES_METADATA_KEY = "curate.learner_scores"

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string()),
        pa.field("shard", pa.string()),
        pa.field("batch", pa.int64()),
        pa.field("super_batch", pa.int64()),
        pa.field("chunk", pa.int32()),
        pa.field("score", pa.float32()),
        pa.field("sha256", pa.string()),
    ]
)

# Fixed writer settings: together with a deterministic row order they make the file byte-identical run to
# run (pyarrow stamps only its version, never a time).
WRITER_OPTIONS = {"compression": "zstd", "compression_level": 3, "write_statistics": True}
ROW_GROUP_ROWS = 1 << 16  # rows per Parquet row group (a function of the data only: deterministic)


def manifest_writer(handle, metadata: dict[str, str]) -> pq.ParquetWriter:
    """A ParquetWriter of MANIFEST_SCHEMA into `handle`; each `write_table` call adds one row group."""
    return pq.ParquetWriter(handle, MANIFEST_SCHEMA.with_metadata(metadata), **WRITER_OPTIONS)


def manifest_metadata_for(
    config: SelectConfig, reference: ScoreFolder, learner: ScoreFolder | None
) -> dict[str, str]:
    """Deterministic facts only (no time, no machine), so the manifest stays byte-identical run to run."""
    metadata = {
        "curate.version": __version__,
        "curate.method": config.method,
        "curate.criterion": config.criterion,
        "curate.ratio": repr(config.ratio),
        "curate.super_batch": str(config.super_batch),
        "curate.batch_size": str(config.batch_size),
        "curate.steps": "" if config.steps is None else str(config.steps),
        "curate.passes": "" if config.passes is None else str(config.passes),
        "curate.chunks": str(config.chunks),
        "curate.temperature": repr(config.temperature),
        "curate.seed": str(config.seed),
        "curate.where": config.where or "",
        "curate.reference_model": reference.metadata.model,
        "curate.learner_model": learner.metadata.model if learner else "",
        # where the scores were read: what a learner's cost follows upstream (curate.cost)
        SCORES_METADATA_KEY: absolute(reference.path),
        LEARNER_SCORES_METADATA_KEY: absolute(learner.path) if learner else "",
    }
    if config.shards:
        metadata[SHARDS_METADATA_KEY] = absolute(config.shards)
    return metadata


def write_manifest(folder: Path, metadata: dict[str, str], tables: Iterable[pa.Table]) -> None:
    """Write the selected rows, super-batch by super-batch in index order, as one file: row groups are a
    function of the rows alone, so the file's bytes are too."""
    pending: list[pa.Table] = []
    written = 0
    with (
        atomic_open(str(folder / MANIFEST_FILE), "wb") as handle,
        manifest_writer(handle, metadata) as writer,
    ):
        for table in tables:
            pending.append(table)
            if sum(t.num_rows for t in pending) >= ROW_GROUP_ROWS:
                writer.write_table(pa.concat_tables(pending))
                written += sum(t.num_rows for t in pending)
                pending = []
        if pending or not written:
            writer.write_table(pa.concat_tables(pending) if pending else MANIFEST_SCHEMA.empty_table())


def write_summary(folder: Path, summary: dict) -> None:
    """summary.json, strict JSON: json.dump would write a NaN or infinity as a bare `NaN`, which no JSON
    reader but Python's accepts, so those become null."""
    with atomic_open(str(folder / SUMMARY_FILE), "w") as handle:
        json.dump(_finite(summary), handle, indent=2, allow_nan=False)
        handle.write("\n")


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------- readers


def manifest_path(manifest: str | Path) -> Path:
    """`MANIFEST/manifest.parquet` for a manifest folder; a path to the file itself is accepted too."""
    path = local_path(manifest, "manifest")
    if path.is_dir():
        path = path / MANIFEST_FILE
    if not path.is_file():
        raise CurateError(f"no manifest at {manifest} (expected {MANIFEST_FILE}, written by curate select)")
    return path


def read_manifest(manifest: str | Path, columns: list[str] | None = None) -> pa.Table:
    """The manifest's rows, checked against MANIFEST_SCHEMA."""
    path = manifest_path(manifest)
    try:
        present = set(pq.read_schema(path).names)
        wanted = columns if columns is not None else MANIFEST_SCHEMA.names
        reading = [c for c in wanted if c in present]
        if "batch" in wanted and "batch" not in present and "super_batch" in present:
            reading.append("super_batch")  # what a manifest from before `batch` has instead
        table = _upgraded(pq.read_table(path, columns=list(dict.fromkeys(reading))), present)
        table = table.select([c for c in wanted if c in table.column_names])
    except (OSError, pa.ArrowInvalid) as error:
        raise CurateError(f"cannot read manifest {path}: {first_line(error)}") from None
    expected = MANIFEST_SCHEMA if columns is None else pa.schema([MANIFEST_SCHEMA.field(c) for c in columns])
    if not table.schema.remove_metadata().equals(expected):
        raise CurateError(f"{path} is not a curate manifest (columns {sorted(present)})")
    return table


def _upgraded(table: pa.Table, present: set[str]) -> pa.Table:
    """A manifest of an earlier curate, in today's columns: one from before `batch` (one pass) has its
    super-batches as batches, one from before `sha256` has no digests to check."""
    if "super_batch" not in present:
        return table  # not a manifest: the schema check says so
    if "batch" not in present and "super_batch" in table.column_names:
        table = table.append_column("batch", table["super_batch"])
    if "sha256" not in present:
        table = table.append_column("sha256", pa.nulls(table.num_rows, pa.string()))
    return table


def count_unique_keys(manifest: str | Path) -> int:
    """How many distinct keys the manifest holds (fewer than its rows when passes repeat keys)."""
    path = manifest_path(manifest)
    with contextlib.closing(duckdb.connect()) as con:
        return con.execute("SELECT count(DISTINCT key) FROM read_parquet(?)", [str(path)]).fetchone()[0]


MIN_FOUND = 0.99  # share of a manifest's distinct keys that must be found in the shards it names


def require_found(found: int, wanted: int, allow_missing: bool, stage: str) -> None:
    """Refuse to go on when fewer than MIN_FOUND of a manifest's `wanted` distinct keys were `found` in
    its shards (the wrong --shards, a crawl re-downloaded under other keys), unless `allow_missing`:
    `export` and `train --manifest` would otherwise write or train on a fraction of it with exit 0."""
    if allow_missing or wanted == 0 or found >= MIN_FOUND * wanted:
        return
    missing = wanted - found  # a count so far is a lower bound: already too many
    raise CurateError(
        f"{stage}: {missing} of the manifest's {wanted} keys are not in its shards ({missing / wanted:.1%}; "
        f"at most {1 - MIN_FOUND:.0%} may be): are they the shards it was selected from? --allow-missing "
        "goes on"
    )


def manifest_metadata(manifest: str | Path) -> dict[str, str]:
    """The manifest's `curate.*` file metadata (selection parameters, `curate.shards` when recorded)."""
    path = manifest_path(manifest)
    try:
        raw = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid) as error:
        raise CurateError(f"cannot read manifest {path}: {first_line(error)}") from None
    return {k.decode(): v.decode() for k, v in raw.items() if k.startswith(b"curate.")}


def read_summary(manifest: str | Path) -> dict:
    path = manifest_path(manifest).parent / SUMMARY_FILE
    if not path.is_file():
        raise CurateError(f"no {SUMMARY_FILE} beside {manifest_path(manifest)}")
    try:
        summary = json.loads(path.read_text())
    except ValueError:
        raise CurateError(f"{path} is not valid JSON") from None
    if not isinstance(summary, dict):
        raise CurateError(f"{path} is not a curate select summary")
    return summary
