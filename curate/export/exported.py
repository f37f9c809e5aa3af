"""What export changes in a sample, and nothing else: its `.json` gains its batch (and, for a repeat, its
exported name and source key) and its parquet row the `source_key` and `batch` columns. Every other member
keeps its bytes."""

from __future__ import annotations

import json

import pyarrow as pa

from curate.export.plan import Slot
from curate.export.sources import parse_json

# The columns export adds to each output shard's parquet, after the source's own.
EXPORT_FIELDS = (pa.field("source_key", pa.string()), pa.field("batch", pa.int64()))


def exported_members(members: list[tuple[str, bytes]], key: str, slot: Slot) -> list[tuple[str, bytes]]:
    """The sample's members as written: the same bytes, but a .json that also says its batch (and, for a
    repeat, its exported name and source key). A sample without a readable .json gets one."""
    meta = parse_json(dict(members).get("json")) or {"key": key}
    if slot.name != key:
        meta["key"], meta["source_key"] = slot.name, key
    meta["batch"] = slot.batch
    exported = json.dumps(meta, indent=4).encode("utf-8")  # img2dataset's own formatting
    others = [(extension, data) for extension, data in members if extension != "json"]
    position = next((i for i, (extension, _) in enumerate(members) if extension == "json"), len(others))
    return [*others[:position], ("json", exported), *others[position:]]


def export_columns(table: pa.Table, keys: list[str], slots: list[Slot]) -> pa.Table:
    """The source's rows with `key` the exported name, then the source_key and batch columns (replacing
    any of that name the source had)."""
    table = table.set_column(
        table.schema.get_field_index("key"), "key", pa.array([s.name for s in slots], pa.string())
    )
    table = table.drop_columns([f.name for f in EXPORT_FIELDS if f.name in table.column_names])
    table = table.append_column(EXPORT_FIELDS[0], pa.array(keys, pa.string()))
    return table.append_column(EXPORT_FIELDS[1], pa.array([s.batch for s in slots], pa.int64()))
