"""Phase 2 of an export: one output shard written from its spill, in plan order, its `.tar`, `.parquet`
and `_stats.json` as img2dataset lays them out."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pyarrow as pa

from curate.export.config import ExportSummary
from curate.export.exported import EXPORT_FIELDS
from curate.export.spill import POSITION, read_spill
from curate.shards import SHARD_TABLE_SCHEMA, shard_name, write_shard_files


def write_output(out: str, index: int, spill: str, summary: ExportSummary) -> None:
    """Write output shard `index` from its spill, in plan order, one sample in memory at a time."""
    members, tables = read_spill(spill)
    if tables:
        table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
        table = table.sort_by(POSITION)
    else:
        schema = pa.schema([*SHARD_TABLE_SCHEMA, *EXPORT_FIELDS, pa.field(POSITION, pa.int64())])
        table = schema.empty_table()
    positions = table[POSITION].to_pylist()
    names = table["key"].to_pylist()
    if positions != sorted(members):
        raise AssertionError(f"spill {spill}: its rows and members disagree")  # a bug, not bad input

    def samples() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
        if not positions:
            return  # no spill: every sample of this shard was missing
        with open(spill, "rb") as handle:
            for position, name in zip(positions, names, strict=True):
                sample = []
                for extension, offset, size in members[position]:
                    handle.seek(offset)
                    sample.append((extension, handle.read(size)))
                yield name, sample

    table = table.drop_columns([POSITION]).replace_schema_metadata(None)
    write_shard_files(out, shard_name(index), samples(), table)
    if os.path.exists(spill):
        os.remove(spill)
    summary.shards_written += 1
    summary.samples += len(names)
    keys = table["source_key"].to_pylist()
    summary.repeats += sum(key != name for key, name in zip(keys, names, strict=True))
