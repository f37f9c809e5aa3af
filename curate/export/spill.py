"""Spill files: phase 1 appends each source shard's chosen samples, as exported, to one spill per pending
output shard under a local temporary folder; phase 2 reads a spill back to write its shard.

A spill is a file of length-prefixed records rather than a tar: each append of a (source, output) pair
would otherwise pad to a 10 KiB record. Reading one back indexes its members without loading them, so an
output shard's samples can stream from its spill one at a time.
"""

from __future__ import annotations

import itertools
import os
import struct

import pyarrow as pa

from curate.export.config import ExportSummary
from curate.export.exported import export_columns, exported_members
from curate.export.plan import Slot
from curate.export.sources import Source, parquet_rows
from curate.fileio import writing
from curate.shards import shard_name

# A spill record: kind, position in the output shard, extension length, data length; then both.
_RECORD = struct.Struct("<BQHQ")
_MEMBER, _ROWS = 0, 1
POSITION = "__curate_export_position"  # a spilled row's place in its output shard; never written out


def spill_path(folder: str, output: int) -> str:
    return os.path.join(folder, f"{shard_name(output)}.spill")


def spill_source(source: Source, slots: dict[str, list[Slot]], folder: str, summary: ExportSummary) -> None:
    """Append each found occurrence's members, and its parquet rows (an Arrow stream per output shard),
    to the spill of its output shard; count the ones not found."""
    found: list[tuple[Slot, str]] = []
    for key, occurrences in slots.items():
        if key in source.members:
            found.extend((slot, key) for slot in occurrences)
            continue
        summary.missing += len(occurrences)
        summary.keys_missing += 1
        if len(summary.missing_examples) < 3:
            summary.missing_examples.append(f"{source.name}:{key}")
    found.sort(key=lambda entry: entry[0][:2])  # (output, position)
    keys = [key for _, key in found]
    table = export_columns(parquet_rows(source, keys, summary), keys, [slot for slot, _ in found])
    table = table.append_column(POSITION, pa.array([slot.position for slot, _ in found], pa.int64()))
    offset = 0
    for output, group in itertools.groupby(found, key=lambda entry: entry[0].output):
        group = list(group)
        path = spill_path(folder, output)
        with writing(path), open(path, "ab") as handle:
            for slot, key in group:
                for extension, data in exported_members(source.members[key], key, slot):
                    _write_record(handle, _MEMBER, slot.position, extension, data)
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table.slice(offset, len(group)))
            _write_record(handle, _ROWS, 0, "", sink.getvalue().to_pybytes())
        offset += len(group)


def _write_record(handle, kind: int, position: int, extension: str, data: bytes) -> None:
    name = extension.encode("utf-8")
    handle.write(_RECORD.pack(kind, position, len(name), len(data)))
    handle.write(name)
    handle.write(data)


def read_spill(path: str) -> tuple[dict[int, list[tuple[str, int, int]]], list[pa.Table]]:
    """The spill's index, position -> [(extension, offset, size)] in append order, and its parquet rows."""
    members: dict[int, list[tuple[str, int, int]]] = {}
    tables: list[pa.Table] = []
    if not os.path.exists(path):  # every sample of this output shard was missing
        return members, tables
    with open(path, "rb") as handle:
        while header := handle.read(_RECORD.size):
            kind, position, name_size, size = _RECORD.unpack(header)
            extension = handle.read(name_size).decode("utf-8")
            if kind == _ROWS:
                tables.append(pa.ipc.open_stream(handle.read(size)).read_all())
            else:
                members.setdefault(position, []).append((extension, handle.tell(), size))
                handle.seek(size, os.SEEK_CUR)
    return members, tables
