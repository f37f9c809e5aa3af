"""`curate export`: copy a manifest's samples into new shards in img2dataset's layout, in training order.

The plan is the manifest in training order (batch ascending, then its row order within a batch) cut into
output shards of K samples: output shard i holds plan rows [i·K, (i+1)·K), so consecutive batches land in
consecutive shards and a loader that reads the shards in order, without shuffling, sees JEST's batches in
JEST's order. Which sample lands where depends on the manifest and K alone, so a re-run skips the output
shards whose `_stats.json` exists and reads only the source shards that the others need.

A key that recurs across passes (`select --steps`) is written once per occurrence. Members of one sample
share a prefix and webdataset groups consecutive members by it, so no two samples may share a name: the
first occurrence keeps its key; the n-th repeat is `{key}_{n}`, or the next free `{key}_{m}` when that is
another manifest key's name (see `exported_names`), so names never collide. Every member (image, .txt, any
other) is copied byte for byte, never decoded, except the `.json`: the source's JSON plus `"batch": t`, and
for a repeat `"key"` (its exported name) and `"source_key"` (the manifest key). Each output shard also gets
its rows of the source `.parquet` (all columns, e.g. `noise` or `sha256`; `key` the exported name) plus
`source_key` and `batch` columns, and a `_stats.json`; `sizes.json` lists them all for open_clip.

Source shards are read once each, in name order, as tar streams (phase 1): the chosen members of one are
held in memory and appended to a spill file per pending output shard, under a local temporary folder
(TMPDIR). An output shard is written from its spill, in plan order (phase 2), as soon as the last source it
needs has been read, and its spill deleted; so peak memory is one source shard's chosen members plus one
output shard's parquet rows (its samples stream from the spill one at a time), and the temporary disk holds
only the shards still waiting for a source, not the whole export. A spill is a file of length-prefixed
records rather than a tar: each append of a (source, output) pair would otherwise pad to a 10 KiB record.

The manifest is local (as select writes it); the source shards and the output folder may be fsspec URLs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import struct
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import CurateError, first_line
from curate.fileio import atomic_open, basename, filesystem, join, local_path, remove_stale_temporaries
from curate.runtime import Progress
from curate.select.manifest import (
    SHARDS_METADATA_KEY,
    manifest_metadata,
    manifest_path,
    read_manifest,
    require_found,
)
from curate.shards import (
    SHARD_TABLE_SCHEMA,
    STATS_SUFFIX,
    SUCCESS,
    ReadStats,
    expand_shards,
    folder_files,
    iter_members,
    shard_done,
    shard_name,
    shard_sibling,
    write_shard_files,
    write_sizes,
)
from curate.shards.paths import shards_by_name
from curate.shards.schema import image_extension, is_safe_key

EXPORT_FILE = "export.json"  # the plan's fingerprint, so a resume never mixes two exports in one folder
MAX_SAMPLES_PER_SHARD = 10_000  # img2dataset's default
# open_clip needs at least workers × GPUs shards; 16 serves a typical 8-GPU node or 16 loader workers
MIN_SHARDS = 16
# The columns export adds to each output shard's parquet, after the source's own.
EXPORT_FIELDS = (pa.field("source_key", pa.string()), pa.field("batch", pa.int64()))


def default_samples_per_shard(samples: int) -> int:
    """Up to 10,000 per shard, fewer when that would leave under 16 shards for the loader's workers."""
    return max(1, min(MAX_SAMPLES_PER_SHARD, math.ceil(samples / MIN_SHARDS)))


@dataclass(frozen=True)
class ExportConfig:
    # where the source shards live; default: as recorded by `curate select --shards`
    shards: str | None = None
    samples_per_shard: int | None = None  # default: default_samples_per_shard(manifest rows)
    command: str = ""
    allow_missing: bool = False  # go on when under MIN_FOUND of the manifest's keys are in their shards

    def __post_init__(self) -> None:
        if self.samples_per_shard is not None and self.samples_per_shard < 1:
            raise CurateError(f"--samples-per-shard must be at least 1, got {self.samples_per_shard}")


@dataclass
class ExportSummary:
    folder: str
    samples: int = 0  # written by this run, repeats included
    repeats: int = 0  # of them, later occurrences of a key, written as {key}_{n}
    shards_written: int = 0
    shards_skipped: int = 0  # already complete from an earlier run
    source_shards_read: int = 0
    missing: int = 0  # chosen samples not found in their source tar (occurrences)
    missing_examples: list[str] = field(default_factory=list)
    keys_wanted: int = 0  # distinct (source shard, key) pairs this run looked for
    keys_missing: int = 0  # of them, not found
    verified: int = 0  # samples whose image matched the sha256 it was scored with
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (source shard, why its tar ended early)
    # (source shard, why): its chosen samples' parquet rows were rebuilt from their .json members
    rebuilt: list[tuple[str, str]] = field(default_factory=list)
    samples_per_shard: int = 0
    seconds: float = 0.0

    @property
    def shards(self) -> int:
        return self.shards_written + self.shards_skipped


class _Planned(NamedTuple):
    """One row of the plan: a sample, the batch that trains on it, and its name in the output."""

    source: str
    key: str
    batch: int
    name: str
    sha256: str | None  # of its image as scored; None in manifests from before it was recorded


class _Slot(NamedTuple):
    """Where one occurrence of a chosen key goes: output shard, position in it, name, batch."""

    output: int
    position: int
    name: str
    batch: int


@dataclass
class _Source:
    """The chosen samples of one source shard: tar members by key, and their parquet rows."""

    name: str
    members: dict[str, list[tuple[str, bytes]]]
    table: pa.Table | None  # the source parquet, when it could be read
    rows: dict[str, int]  # key -> its row of `table` (a successful one first)
    unusable: str | None  # why the source parquet could not be used, when it could not


def export(manifest: str, out: str, config: ExportConfig, progress: Progress | None = None) -> ExportSummary:
    """Write `out/{00000..}.tar|.parquet|_stats.json` and `out/sizes.json` holding the manifest's samples."""
    start = time.perf_counter()
    manifest = str(local_path(manifest, "MANIFEST"))
    plan = _plan(manifest)
    sources = _locate_sources(manifest, config, plan)
    per_shard = config.samples_per_shard or default_samples_per_shard(len(plan))
    outputs = math.ceil(len(plan) / per_shard)
    summary = ExportSummary(folder=out, samples_per_shard=per_shard)
    _claim_folder(out, manifest, plan, per_shard, outputs, config.command)
    remove_stale_temporaries(out)  # a killed run's half-written shards

    pending = [i for i in range(outputs) if not shard_done(out, i)]
    summary.shards_skipped = outputs - len(pending)
    wanted: dict[str, dict[str, list[_Slot]]] = {}  # source shard -> key -> its occurrences still to write
    digests: dict[tuple[str, str], str | None] = {}  # (source shard, key) -> its image's sha256 as scored
    last_source: dict[int, str] = {}  # pending output shard -> the last source (in name order) it needs
    for i in pending:
        for position, row in enumerate(plan[i * per_shard : (i + 1) * per_shard]):
            slot = _Slot(i, position, row.name, row.batch)
            wanted.setdefault(row.source, {}).setdefault(row.key, []).append(slot)
            digests[row.source, row.key] = row.sha256
            last_source[i] = max(last_source.get(i, row.source), row.source)
    summary.keys_wanted = len(digests)
    ready_after: dict[str, list[int]] = {}
    for i, source in sorted(last_source.items()):
        ready_after.setdefault(source, []).append(i)

    done = len(plan) - sum(_rows_of(i, per_shard, len(plan)) for i in pending)
    with tempfile.TemporaryDirectory(prefix="curate-export-") as spills:
        for name in sorted(wanted):
            source = _read_source(sources[name], set(wanted[name]), summary)
            summary.source_shards_read += 1
            _verify(source, digests, summary)
            _spill_source(source, wanted[name], spills, summary)
            # As soon as too many are missing for the rest to make up for it: nothing more is written.
            found_at_most = summary.keys_wanted - summary.keys_missing
            require_found(found_at_most, summary.keys_wanted, config.allow_missing, "export")
            del source  # one source shard's members in memory at a time
            for i in ready_after.get(name, []):
                _write_output(out, i, _spill_path(spills, i), summary)
                done += _rows_of(i, per_shard, len(plan))
                if progress:
                    progress(done, len(plan))
    write_sizes(out)
    summary.seconds = time.perf_counter() - start
    return summary


def _rows_of(output: int, per_shard: int, total: int) -> int:
    return min(per_shard, total - output * per_shard)


# ------------------------------------------------------------------------------------------------- plan


def _plan(manifest: str) -> list[_Planned]:
    """Every chosen sample in training order (batch, then the manifest's row order): the export's order."""
    table = read_manifest(manifest, ["key", "shard", "batch", "sha256"])
    order = pa.array(np.argsort(table["batch"].to_numpy(), kind="stable"))
    table = table.take(order)
    keys = table["key"].to_pylist()
    for key in keys:
        if "." in key or not is_safe_key(key):  # what the shard readers refuse as dotted_key or unsafe_key
            raise CurateError(f"manifest key {key!r} cannot be a tar member name (no '.', '/' or '\\\\')")
    sources, batches, digests = (table[c].to_pylist() for c in ("shard", "batch", "sha256"))
    names = exported_names(keys)
    return [_Planned(*row) for row in zip(sources, keys, batches, names, digests, strict=True)]


def exported_names(keys: Sequence[str]) -> list[str]:
    """The output name of each occurrence of `keys` (in plan order): the key itself the first time, then
    `{key}_1`, `{key}_2`, ... A suffix that would make another manifest key's name (or an earlier repeat's)
    is skipped, so the names are unique whatever the keys: ("a", "a_1", "a") gives "a", "a_1", "a_2"."""
    taken = set(keys)
    suffixes: dict[str, int] = {}  # key -> the last suffix it used (0: only its first occurrence so far)
    names = []
    for key in keys:
        if key not in suffixes:
            suffixes[key] = 0
            names.append(key)
            continue
        n = suffixes[key] + 1
        while f"{key}_{n}" in taken:
            n += 1
        suffixes[key] = n
        taken.add(f"{key}_{n}")
        names.append(f"{key}_{n}")
    return names


def _locate_sources(manifest: str, config: ExportConfig, plan: list[_Planned]) -> dict[str, str]:
    """Source shard name -> path, checking up front that every shard the manifest names is there."""
    location = config.shards or manifest_metadata(manifest).get(SHARDS_METADATA_KEY)
    if not location:
        raise CurateError(
            "the manifest does not record where its shards live: pass --shards SHARDS "
            "(or record it with curate select --shards)"
        )
    return shards_by_name(expand_shards(location), [row.source for row in plan], location)


def _claim_folder(out: str, manifest: str, plan: list, per_shard: int, outputs: int, command: str) -> None:
    """Write `export.json`, or check that the one there describes this same export (safe resume)."""
    digest = hashlib.sha256()
    for row in plan:  # the order too: the same samples in another order are another export
        digest.update(f"{row.source}\t{row.key}\t{row.batch}\n".encode())
    fingerprint = {"samples": len(plan), "samples_per_shard": per_shard, "shards": outputs}
    fingerprint["plan_sha256"] = digest.hexdigest()
    fs, path = filesystem(out)
    fs.makedirs(path, exist_ok=True)
    record = join(out, EXPORT_FILE)
    record_path = filesystem(record)[1]
    if fs.exists(record_path):
        existing = _read_record(fs, record_path, record)
        if {k: existing.get(k) for k in fingerprint} != fingerprint:
            raise CurateError(
                f"{out} holds another export (another manifest or --samples-per-shard); "
                "export into a new folder"
            )
        return
    if folder_files(out, STATS_SUFFIX):
        raise CurateError(f"{out} already holds shards that curate export did not write; use a new folder")
    with atomic_open(record, "w") as handle:
        json.dump(
            {**fingerprint, "manifest": str(manifest_path(manifest).resolve()), "command": command}, handle
        )


def _read_record(fs, path: str, record: str) -> dict:
    try:
        with fs.open(path, "r") as handle:
            existing = json.load(handle)
    except ValueError as error:
        raise CurateError(
            f"{record} is damaged ({first_line(error)}); export into a new folder, or delete it to start over"
        ) from None
    if not isinstance(existing, dict):
        raise CurateError(f"{record} is not a curate export record; export into a new folder")
    return existing


# ---------------------------------------------------------------------------------------------- sources


def _read_source(path: str, keys: set[str], summary: ExportSummary) -> _Source:
    stats = ReadStats()
    members: dict[str, list[tuple[str, bytes]]] = {}
    for key, group in iter_members(path, stats):
        if key in keys and key not in members:  # a key repeated later in the tar keeps its first copy
            members[key] = list(group.items())
    summary.damaged.extend(stats.bad_shards)
    table, rows, unusable = _source_rows(path, members) if members else (None, {}, None)
    return _Source(basename(path), members, table, rows, unusable)


def _verify(source: _Source, digests: dict[tuple[str, str], str | None], summary: ExportSummary) -> None:
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


def _rows(source: _Source, keys: list[str], summary: ExportSummary) -> pa.Table:
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
    meta = _parse_json(dict(members).get("json"))
    ints = {"width", "height"}
    return {k: (v if k not in ints or isinstance(v, int) else None) for k, v in meta.items()}


def _parse_json(raw: bytes | None) -> dict:
    try:
        meta = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _exported_members(members: list[tuple[str, bytes]], key: str, slot: _Slot) -> list[tuple[str, bytes]]:
    """The sample's members as written: the same bytes, but a .json that also says its batch (and, for a
    repeat, its exported name and source key). A sample without a readable .json gets one."""
    meta = _parse_json(dict(members).get("json")) or {"key": key}
    if slot.name != key:
        meta["key"], meta["source_key"] = slot.name, key
    meta["batch"] = slot.batch
    exported = json.dumps(meta, indent=4).encode("utf-8")  # img2dataset's own formatting
    others = [(extension, data) for extension, data in members if extension != "json"]
    position = next((i for i, (extension, _) in enumerate(members) if extension == "json"), len(others))
    return [*others[:position], ("json", exported), *others[position:]]


def _export_columns(table: pa.Table, keys: list[str], slots: list[_Slot]) -> pa.Table:
    """The source's rows with `key` the exported name, then source_key, batch and the plan position."""
    table = table.set_column(
        table.schema.get_field_index("key"), "key", pa.array([s.name for s in slots], pa.string())
    )
    table = table.drop_columns([f.name for f in EXPORT_FIELDS if f.name in table.column_names])
    table = table.append_column(EXPORT_FIELDS[0], pa.array(keys, pa.string()))
    table = table.append_column(EXPORT_FIELDS[1], pa.array([s.batch for s in slots], pa.int64()))
    return table.append_column(_POSITION, pa.array([s.position for s in slots], pa.int64()))


# ----------------------------------------------------------------------------------------------- spills

# A spill record: kind, position in the output shard, extension length, data length; then both.
_RECORD = struct.Struct("<BQHQ")
_MEMBER, _ROWS = 0, 1
_POSITION = "__curate_export_position"  # a spilled row's place in its output shard; never written out


def _spill_path(folder: str, output: int) -> str:
    return os.path.join(folder, f"{shard_name(output)}.spill")


def _spill_source(
    source: _Source, slots: dict[str, list[_Slot]], folder: str, summary: ExportSummary
) -> None:
    """Append each found occurrence's members, and its parquet rows (an Arrow stream per output shard),
    to the spill of its output shard; count the ones not found."""
    found: list[tuple[_Slot, str]] = []
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
    table = _export_columns(_rows(source, keys, summary), keys, [slot for slot, _ in found])
    offset = 0
    for output, group in itertools.groupby(found, key=lambda entry: entry[0].output):
        group = list(group)
        with open(_spill_path(folder, output), "ab") as handle:
            for slot, key in group:
                for extension, data in _exported_members(source.members[key], key, slot):
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


def _read_spill(path: str) -> tuple[dict[int, list[tuple[str, int, int]]], list[pa.Table]]:
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


# ----------------------------------------------------------------------------------------------- output


def _write_output(out: str, index: int, spill: str, summary: ExportSummary) -> None:
    """Write output shard `index` from its spill, in plan order, one sample in memory at a time."""
    members, tables = _read_spill(spill)
    if tables:
        table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
        table = table.sort_by(_POSITION)
    else:
        schema = pa.schema([*SHARD_TABLE_SCHEMA, *EXPORT_FIELDS, pa.field(_POSITION, pa.int64())])
        table = schema.empty_table()
    positions = table[_POSITION].to_pylist()
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

    table = table.drop_columns([_POSITION]).replace_schema_metadata(None)
    write_shard_files(out, shard_name(index), samples(), table)
    if os.path.exists(spill):
        os.remove(spill)
    summary.shards_written += 1
    summary.samples += len(names)
    keys = table["source_key"].to_pylist()
    summary.repeats += sum(key != name for key, name in zip(keys, names, strict=True))
