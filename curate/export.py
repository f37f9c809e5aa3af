"""`curate export`: copy the samples a manifest chose into new shards in img2dataset's layout.

The plan is the manifest sorted by (source shard, key) and cut into output shards of K samples, so which
sample lands in which output shard depends on the manifest and K alone: a re-run skips the output shards
whose `_stats.json` exists and reads only the source shards that the others need. Source shards are read
once each, in order, as tar streams; every member of a chosen sample (image, .txt, .json and any other) is
copied byte for byte, never decoded. Each output shard also gets its rows of the source `.parquet` (all
columns, e.g. `noise` or `sha256`) and a `_stats.json`; `sizes.json` lists them all for open_clip.

The manifest is local (as select writes it); the source shards and the output folder may be fsspec URLs.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import CurateError, first_line
from curate.fileio import atomic_open, basename, filesystem, join, local_path
from curate.runtime import Progress
from curate.select.manifest import SHARDS_METADATA_KEY, manifest_metadata, manifest_path, read_manifest
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

EXPORT_FILE = "export.json"  # the plan's fingerprint, so a resume never mixes two exports in one folder
MAX_SAMPLES_PER_SHARD = 10_000  # img2dataset's default
# open_clip needs at least workers × GPUs shards; 16 serves a typical 8-GPU node or 16 loader workers
MIN_SHARDS = 16


def default_samples_per_shard(samples: int) -> int:
    """Up to 10,000 per shard, fewer when that would leave under 16 shards for the loader's workers."""
    return max(1, min(MAX_SAMPLES_PER_SHARD, math.ceil(samples / MIN_SHARDS)))


@dataclass(frozen=True)
class ExportConfig:
    # where the source shards live; default: as recorded by `curate select --shards`
    shards: str | None = None
    samples_per_shard: int | None = None  # default: default_samples_per_shard(manifest rows)
    command: str = ""

    def __post_init__(self) -> None:
        if self.samples_per_shard is not None and self.samples_per_shard < 1:
            raise CurateError(f"--samples-per-shard must be at least 1, got {self.samples_per_shard}")


@dataclass
class ExportSummary:
    folder: str
    samples: int = 0  # written by this run
    shards_written: int = 0
    shards_skipped: int = 0  # already complete from an earlier run
    source_shards_read: int = 0
    missing: int = 0  # chosen samples not found in their source tar
    missing_examples: list[str] = field(default_factory=list)
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (source shard, why its tar ended early)
    # (source shard, why): its chosen samples' parquet rows were rebuilt from their .json members
    rebuilt: list[tuple[str, str]] = field(default_factory=list)
    samples_per_shard: int = 0
    seconds: float = 0.0

    @property
    def shards(self) -> int:
        return self.shards_written + self.shards_skipped


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

    pending = [i for i in range(outputs) if not shard_done(out, i)]
    summary.shards_skipped = outputs - len(pending)
    wanted: dict[str, set[str]] = {}  # source shard -> keys still to write
    for i in pending:
        for source, key in plan[i * per_shard : (i + 1) * per_shard]:
            wanted.setdefault(source, set()).add(key)

    done = summary.shards_skipped * per_shard
    current: _Source | None = None
    for i in pending:
        rows = plan[i * per_shard : (i + 1) * per_shard]
        samples: list[tuple[str, list[tuple[str, bytes]]]] = []
        tables: list[pa.Table] = []
        for source, keys in _runs(rows):
            if current is None or current.name != source:
                # The plan is sorted by source shard, so a source is needed by one run of outputs only:
                # dropping the previous one here means each is read once and one is held at a time.
                current = _read_source(sources[source], wanted[source], summary)
                summary.source_shards_read += 1
            found = [key for key in keys if key in current.members]
            for key in keys:
                if key not in current.members:
                    summary.missing += 1
                    if len(summary.missing_examples) < 3:
                        summary.missing_examples.append(f"{source}:{key}")
            samples.extend((key, current.members[key]) for key in found)
            tables.append(_rows(current, found, summary))
        _write_output(out, i, samples, tables)
        summary.shards_written += 1
        summary.samples += len(samples)
        done += len(rows)
        if progress:
            progress(done, len(plan))
    write_sizes(out)
    summary.seconds = time.perf_counter() - start
    return summary


def _plan(manifest: str) -> list[tuple[str, str]]:
    """(source shard, key) of every chosen sample, sorted: the order of the exported samples."""
    table = read_manifest(manifest, ["key", "shard"]).sort_by([("shard", "ascending"), ("key", "ascending")])
    plan = list(zip(table["shard"].to_pylist(), table["key"].to_pylist(), strict=True))
    repeated = [key for key, n in Counter(key for _, key in plan).items() if n > 1]
    if repeated:
        raise CurateError(
            f"{manifest_path(manifest)} lists key {repeated[0]} more than once; "
            "a manifest names each sample once"
        )
    for _, key in plan:
        if not key or "." in key or "/" in key or "\\" in key:
            raise CurateError(f"manifest key {key!r} cannot be a tar member name (no '.', '/' or '\\\\')")
    return plan


def _locate_sources(manifest: str, config: ExportConfig, plan: list[tuple[str, str]]) -> dict[str, str]:
    """Source shard name -> path, checking up front that every shard the manifest names is there."""
    location = config.shards or manifest_metadata(manifest).get(SHARDS_METADATA_KEY)
    if not location:
        raise CurateError(
            "the manifest does not record where its shards live: pass --shards SHARDS "
            "(or record it with curate select --shards)"
        )
    paths = {basename(path): path for path in expand_shards(location)}
    needed = sorted({source for source, _ in plan})
    absent = [name for name in needed if name not in paths]
    if absent:
        examples = ", ".join(absent[:3]) + (", ..." if len(absent) > 3 else "")
        raise CurateError(f"{len(absent)} shard(s) named by the manifest are not in {location}: {examples}")
    return {name: paths[name] for name in needed}


def _claim_folder(out: str, manifest: str, plan: list, per_shard: int, outputs: int, command: str) -> None:
    """Write `export.json`, or check that the one there describes this same export (safe resume)."""
    digest = hashlib.sha256()
    for source, key in plan:
        digest.update(f"{source}\t{key}\n".encode())
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


def _runs(rows: list[tuple[str, str]]) -> Iterator[tuple[str, list[str]]]:
    """Consecutive rows grouped by source shard: (source, [keys])."""
    start = 0
    for end in range(1, len(rows) + 1):
        if end == len(rows) or rows[end][0] != rows[start][0]:
            yield rows[start][0], [key for _, key in rows[start:end]]
            start = end


def _read_source(path: str, keys: set[str], summary: ExportSummary) -> _Source:
    stats = ReadStats()
    members: dict[str, list[tuple[str, bytes]]] = {}
    for key, group in iter_members(path, stats):
        if key in keys and key not in members:  # a key repeated later in the tar keeps its first copy
            members[key] = list(group.items())
    summary.damaged.extend(stats.bad_shards)
    table, rows, unusable = _source_rows(path, members) if members else (None, {}, None)
    return _Source(basename(path), members, table, rows, unusable)


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
    """One parquet row per written sample, in tar order: the source's row, else one built from its .json.

    The .json members carry each sample's metadata, so a source parquet that is missing or unusable costs
    only its extra columns; the summary names it, once per source shard.
    """
    if source.table is not None and all(key in source.rows for key in keys):
        return source.table.take(pa.array([source.rows[key] for key in keys], pa.int64()))
    if keys and all(name != source.name for name, _ in summary.rebuilt):
        missing = sum(key not in source.rows for key in keys)
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
    raw = dict(members).get("json")
    try:
        meta = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    if not isinstance(meta, dict):
        return {}
    ints = {"width", "height"}
    return {k: (v if k not in ints or isinstance(v, int) else None) for k, v in meta.items()}


def _write_output(
    out: str, index: int, samples: list[tuple[str, list[tuple[str, bytes]]]], tables: list[pa.Table]
) -> None:
    tables = [t for t in tables if t.num_rows] or tables[:1] or [SHARD_TABLE_SCHEMA.empty_table()]
    table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    write_shard_files(out, shard_name(index), samples, table.replace_schema_metadata(None))
