"""The manifest (docs/reference/formats.md, "Manifest"): the chosen samples, defined once for all its users.

| key, shard   | string  | which sample (`shard` is the source tar's file name, e.g. 00003.tar)  |
| batch        | int64   | its batch: unique, ascending in training order (0..S-1 without parts) |
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
score folders it read (`curate.scores`, `curate.learner_scores`), which a learner's cost follows upstream,
and `curate.selection`: a digest of those parameters and of the content ids of the score folders read, the
selection's identity, which every part records and resume checks. `summary.json` sits beside it (its
content is built in `select/summary.py`). Manifest folders are local.

A selection of several partitions (select/plan.py) writes one part per partition instead of
`manifest.parquet`: `part-00000.parquet`, `part-00001.parquet`, ..., each with `curate.partition` and
`curate.partitions` in its metadata. Batch ids are unique across parts and interleave them (partition k of P
holds batches k, k + P, k + 2P, ...), so training order is batch order with gaps where one partition made
fewer batches than another. The readers below read every part; a folder mixing parts of two runs (parts
that disagree on any parameter or on `curate.selection`, or parts and a manifest.parquet, from a run
killed while it replaced them) is refused, as is a null key, shard or batch or a key repeated in a batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate import __version__
from curate.errors import CurateError, first_line
from curate.fileio import absolute, atomic_open, local_path, read_json_object, temporary_name, write_json
from curate.score.schema import ScoreFolder
from curate.select.config import SelectConfig

MANIFEST_FILE = "manifest.parquet"
PART_FILE = "part-{:05d}.parquet"
_PART = re.compile(r"part-[0-9]{5,}\.parquet")
PARTITION_METADATA_KEY = "curate.partition"
PARTITIONS_METADATA_KEY = "curate.partitions"
SUMMARY_FILE = "summary.json"
SHARDS_METADATA_KEY = "curate.shards"
SCORES_METADATA_KEY = "curate.scores"
LEARNER_SCORES_METADATA_KEY = "curate.learner_scores"
SELECTION_METADATA_KEY = "curate.selection"

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
    config: SelectConfig, reference: ScoreFolder, learner: ScoreFolder | None, inputs: tuple[str, str]
) -> dict[str, str]:
    """Deterministic facts only (no time, no machine), so the manifest stays byte-identical run to run.
    `inputs`: the content ids of the whole reference and learner folders (a partition reads part of one)."""
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
    if config.mask_threshold is not None:  # only when set: manifests without a mask keep their bytes
        metadata["curate.false_negatives"] = config.false_negatives
    # The selection's identity: its parameters and the content of the scores it read, which every part
    # records, so that parts of two selections (or a manifest selected anew under a resumed run) are told
    # apart by what made them, not by their names.
    made_of = json.dumps([sorted(metadata.items()), list(inputs)]).encode()
    metadata[SELECTION_METADATA_KEY] = hashlib.sha256(made_of).hexdigest()[:16]
    return metadata


def write_manifest(
    folder: Path, metadata: dict[str, str], tables: Iterable[pa.Table], name: str = MANIFEST_FILE
) -> None:
    """Write the selected rows, super-batch by super-batch in index order, as one file `folder/name`: row
    groups are a function of the rows alone, so the file's bytes are too."""
    pending: list[pa.Table] = []
    written = 0
    with (
        atomic_open(str(folder / name), "wb") as handle,
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


def output_name(number: int, count: int) -> str:
    """The file partition `number` of `count` publishes: manifest.parquet for a single one, else its part."""
    return MANIFEST_FILE if count == 1 else PART_FILE.format(number)


def partition_metadata(metadata: dict[str, str], number: int, count: int) -> dict[str, str]:
    """A part's metadata: the selection's, plus which part it is (a single partition adds nothing, so its
    manifest.parquet is byte for byte what a selection without partitions writes)."""
    if count == 1:
        return metadata
    return {**metadata, PARTITION_METADATA_KEY: str(number), PARTITIONS_METADATA_KEY: str(count)}


def staged_name(number: int, count: int) -> str:
    """Where a partition writes its file until the whole selection is done: a hidden name in the format of
    `atomic_open`'s temporaries, naming this (the driver's) process, so that a killed run's staged parts are
    removed by the next run's `remove_stale_temporaries` and never read as a manifest meanwhile."""
    return temporary_name(output_name(number, count))


def publish(folder: Path, staged: list[str]) -> None:
    """Rename the staged files of a finished selection to their names, then remove whatever manifest files
    a previous run left that this one did not write (more parts, or a manifest.parquet where parts are now).
    Each rename is atomic; a run killed between them leaves a mix that the readers refuse."""
    names = [output_name(k, len(staged)) for k in range(len(staged))]
    for name, temporary in zip(names, staged, strict=True):
        os.replace(folder / temporary, folder / name)
    for entry in os.scandir(folder):
        if (entry.name == MANIFEST_FILE or _PART.fullmatch(entry.name)) and entry.name not in names:
            with contextlib.suppress(FileNotFoundError):
                os.remove(entry.path)


def discard(folder: Path, staged: list[str]) -> None:
    """Remove the staged files of a selection that failed before publishing."""
    for temporary in staged:
        with contextlib.suppress(FileNotFoundError):
            os.remove(folder / temporary)


def write_summary(folder: Path, summary: dict) -> None:
    """summary.json, strict JSON (a NaN score is null)."""
    write_json(str(folder / SUMMARY_FILE), summary)


# ---------------------------------------------------------------------------------------------- readers


def manifest_files(manifest: str | Path) -> list[Path]:
    """The files of a manifest: its folder's manifest.parquet, or all its parts in order; a path to one file
    is that file alone."""
    path = local_path(manifest, "manifest")
    if path.is_file():
        return [path]
    single = path / MANIFEST_FILE
    parts = sorted(p for p in path.iterdir() if _PART.fullmatch(p.name)) if path.is_dir() else []
    if single.is_file() and parts:
        raise CurateError(
            f"{manifest} holds both {MANIFEST_FILE} and part files (a selection killed while replacing its "
            "files?): re-run curate select"
        )
    if parts:
        _check_parts(manifest, parts)
        return parts
    if not single.is_file():
        raise CurateError(
            f"no manifest at {manifest} (expected {MANIFEST_FILE} or part-*.parquet, written by curate "
            "select)"
        )
    return [single]


def holds_manifest(folder: Path) -> bool:
    """Whether `folder` holds a manifest's files (manifest.parquet or parts), without reading them."""
    return (folder / MANIFEST_FILE).is_file() or (
        folder.is_dir() and any(_PART.fullmatch(entry.name) for entry in os.scandir(folder))
    )


def _check_parts(manifest: str | Path, parts: list[Path]) -> None:
    """Parts 0..P-1 of one selection of P partitions, each saying so in its metadata, and all of the same
    selection: the same parameters and, where recorded, the same `curate.selection` (its inputs' content)."""
    first = _file_metadata(parts[0])
    first.pop(PARTITION_METADATA_KEY, None)
    for number, part in enumerate(parts):
        metadata = _file_metadata(part)
        if (metadata.pop(PARTITION_METADATA_KEY, None), metadata.get(PARTITIONS_METADATA_KEY)) != (
            str(number),
            str(len(parts)),
        ):
            raise CurateError(
                f"{manifest}: its part files are not parts 0..{len(parts) - 1} of one selection ({part.name} "
                "is not): re-run curate select"
            )
        differing = sorted(k for k in {*first, *metadata} if first.get(k) != metadata.get(k))
        if differing:
            key = SELECTION_METADATA_KEY if SELECTION_METADATA_KEY in differing else differing[0]
            raise CurateError(
                f"{manifest}: {part.name} is of another selection than {parts[0].name} ({key} "
                f"{metadata.get(key)!r} against {first.get(key)!r}): re-run curate select"
            )


def manifest_path(manifest: str | Path) -> Path:
    """Where the manifest is: `MANIFEST/manifest.parquet` (or the one file given), or the folder of its
    parts."""
    files = manifest_files(manifest)
    return files[0] if len(files) == 1 else files[0].parent


def read_manifest(manifest: str | Path, columns: list[str] | None = None) -> pa.Table:
    """The manifest's rows (every part's, in part order), checked against MANIFEST_SCHEMA and its rule that
    a key never repeats within one batch (read with both columns)."""
    tables = [_read_file(path, columns) for path in manifest_files(manifest)]
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
    if {"batch", "key"} <= set(table.column_names):
        pairs = table.select(["batch", "key"]).group_by(["batch", "key"]).aggregate([([], "count_all")])
        if pairs.num_rows < table.num_rows:
            repeated = pairs.filter(pc.greater(pairs["count_all"], 1))
            raise CurateError(
                f"{manifest_path(manifest)}: key {repeated['key'][0]} repeats within batch "
                f"{repeated['batch'][0]} ({table.num_rows - pairs.num_rows} repeats in all; not written by "
                "curate select?): select anew"
            )
    return table


def _read_file(path: Path, columns: list[str] | None) -> pa.Table:
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
    for name in ("key", "shard", "batch"):  # what every reader joins or orders on
        if name in table.column_names and (nulls := table[name].null_count):
            raise CurateError(
                f"{path}: {nulls} rows with a null {name} (not written by curate select?): select anew"
            )
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
    files = [str(path) for path in manifest_files(manifest)]
    with contextlib.closing(duckdb.connect()) as con:
        return con.execute("SELECT count(DISTINCT key) FROM read_parquet(?)", [files]).fetchall()[0][0]


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


def selection_id(manifest: str | Path) -> str:
    """The selection's identity: its `curate.selection`, or for a manifest written before curate recorded it,
    a digest of its parameters."""
    metadata = manifest_metadata(manifest)
    if SELECTION_METADATA_KEY in metadata:
        return metadata[SELECTION_METADATA_KEY]
    return hashlib.sha256(json.dumps(sorted(metadata.items())).encode()).hexdigest()[:16]


def manifest_metadata(manifest: str | Path) -> dict[str, str]:
    """The manifest's `curate.*` file metadata (selection parameters, `curate.shards` when recorded); of a
    manifest in parts, the first part's, less which part it is (every part records the same selection)."""
    metadata = _file_metadata(manifest_files(manifest)[0])
    metadata.pop(PARTITION_METADATA_KEY, None)
    return metadata


def _file_metadata(path: Path) -> dict[str, str]:
    try:
        raw = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid) as error:
        raise CurateError(f"cannot read manifest {path}: {first_line(error)}") from None
    return {k.decode(): v.decode() for k, v in raw.items() if k.startswith(b"curate.")}


def read_summary(manifest: str | Path) -> dict:
    path = manifest_files(manifest)[0].parent / SUMMARY_FILE
    if not path.is_file():
        raise CurateError(f"no {SUMMARY_FILE} beside {manifest_path(manifest)}")
    return read_json_object(str(path), "a curate select summary")
