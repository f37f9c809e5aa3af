"""The source shards: where each lives, and the chosen samples of one, read once as a tar stream with
their rows of its `.parquet` (rebuilt from the `.json` members when that parquet cannot be used)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import CurateError, first_line
from curate.export.config import ExportConfig, ExportSummary
from curate.export.plan import Planned
from curate.fileio import basename, filesystem
from curate.select.manifest import SHARDS_METADATA_KEY, manifest_metadata
from curate.shards import SHARD_TABLE_SCHEMA, SUCCESS, ReadStats, expand_shards, iter_members, shard_sibling
from curate.shards.paths import shards_by_name
from curate.shards.schema import image_extension


@dataclass
class Source:
    """The chosen samples of one source shard: tar members by key, and their parquet rows."""

    name: str
    members: dict[str, list[tuple[str, bytes]]]
    table: pa.Table | None  # the source parquet, when it could be read
    rows: dict[str, int]  # key -> its row of `table` (a successful one first)
    unusable: str | None  # why the source parquet could not be used, when it could not


def locate_sources(manifest: str, config: ExportConfig, plan: list[Planned]) -> dict[str, str]:
    """Source shard name -> path, checking up front that every shard the manifest names is there."""
    location = config.shards or manifest_metadata(manifest).get(SHARDS_METADATA_KEY)
    if not location:
        raise CurateError(
            "the manifest does not record where its shards live: pass --shards SHARDS "
            "(or record it with curate select --shards)"
        )
    return shards_by_name(expand_shards(location), [row.source for row in plan], location)


def read_source(path: str, keys: set[str], summary: ExportSummary) -> Source:
    """The members of `keys` in the tar at `path`, and their parquet rows; a damaged tar is counted."""
    stats = ReadStats()
    members: dict[str, list[tuple[str, bytes]]] = {}
    for key, group in iter_members(path, stats):
        if key in keys and key not in members:  # a key repeated later in the tar keeps its first copy
            members[key] = list(group.items())
    summary.damaged.extend(stats.bad_shards)
    table, rows, unusable = _source_rows(path, members) if members else (None, {}, None)
    return Source(basename(path), members, table, rows, unusable)


def verify(source: Source, digests: dict[tuple[str, str], str | None], summary: ExportSummary) -> None:
    """Check each found sample's image against the sha256 it was scored with: a source folder of another
    crawl with the same shard and key names would otherwise be copied without a word."""
    for key, members in source.members.items():
        expected = digests[source.name, key]
        if expected is None:
            continue  # scored before curate recorded digests
        group = dict(members)
        extension = image_extension(group)
        image = group[extension] if extension else b""
        if hashlib.sha256(image).hexdigest() != expected:
            raise CurateError(
                f"source shard {source.name}: sample {key} is not the one that was scored (its image's "
                "sha256 differs); do --shards (or select --shards) name the crawl that was scored?"
            )
        summary.verified += 1


def _source_rows(path: str, members: dict) -> tuple[pa.Table | None, dict[str, int], str | None]:
    """The source parquet, the row of each found key in it (a successful row first when a key has
    several), and why it cannot be used when it cannot."""
    parquet = shard_sibling(path, ".parquet")
    fs, fs_path = filesystem(parquet)
    if not fs.exists(fs_path):
        return None, {}, f"no {basename(parquet)} beside it"
    try:
        with fs.open(fs_path, "rb") as handle:
            table = pq.read_table(handle)
    except (OSError, pa.ArrowInvalid) as error:
        return None, {}, f"its .parquet cannot be read: {first_line(error)}"
    if "key" not in table.column_names:
        return None, {}, "its .parquet has no key column"
    statuses = table["status"].to_pylist() if "status" in table.column_names else [SUCCESS] * table.num_rows
    rows: dict[str, int] = {}
    for row, (key, status) in enumerate(zip(table["key"].to_pylist(), statuses, strict=True)):
        if key in members and (key not in rows or (status == SUCCESS and statuses[rows[key]] != SUCCESS)):
            rows[key] = row
    return table, rows, None


def parquet_rows(source: Source, keys: list[str], summary: ExportSummary) -> pa.Table:
    """One parquet row per key of `keys` (repeats too): the source's row, else one built from its .json.

    The .json members carry each sample's metadata, so a source parquet that is missing or unusable costs
    only its extra columns; the summary names it, once per source shard.
    """
    if source.table is not None and all(key in source.rows for key in keys):
        return source.table.take(pa.array([source.rows[key] for key in keys], pa.int64()))
    if keys:
        missing = len({key for key in keys if key not in source.rows})
        summary.rebuilt.append((source.name, source.unusable or f"its .parquet lacks {missing} chosen keys"))
    built = {name: [] for name in SHARD_TABLE_SCHEMA.names}
    for key in keys:
        meta = _json_member(source.members[key])
        for name in SHARD_TABLE_SCHEMA.names:
            built[name].append(meta.get(name))
        built["key"][-1] = key
        built["status"][-1] = SUCCESS
        if built["caption"][-1] is None:
            caption = dict(source.members[key]).get("txt", b"")
            built["caption"][-1] = caption.decode("utf-8", errors="replace")
    return pa.Table.from_pydict(built, schema=SHARD_TABLE_SCHEMA)


def _json_member(members: list[tuple[str, bytes]]) -> dict:
    meta = parse_json(dict(members).get("json"))
    ints = {"width", "height"}
    return {k: (v if k not in ints or isinstance(v, int) else None) for k, v in meta.items()}


def parse_json(raw: bytes | None) -> dict:
    """A `.json` member's object; {} when there is none or it is not a JSON object (a sample is still
    copied when its metadata is unreadable)."""
    try:
        meta = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}
