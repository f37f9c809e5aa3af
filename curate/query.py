"""`curate query`: SQL (DuckDB) over the pipeline's Parquet files, streamed to a table, CSV, JSON or Parquet.

Views, each made only when its folder is given:
    scores    every score file of SCORES, checked to come from one model (`open_score_folder`; local)
    manifest  MANIFEST/manifest.parquet, or all its part-*.parquet (`manifest_files`; local)
    keep      KEEP/keep.parquet of `curate dedup`: the keys kept, one per near-duplicate group (local)
    shards    every SHARDS/*.parquet: img2dataset's per-shard tables (url, status, noise, sha256, ...);
              a local folder or any fsspec URL, which DuckDB then reads through fsspec
    batches   run, step, key: what each step of each given run trained on (its RUN/batches.parquet, see
              curate/train/run.py), `run` being the run folder's name; local, one or more runs
Joining `batches` to `shards` on key tells what each learner saw, e.g. the share of each noise kind:
    SELECT run, noise, count(*) AS n, n / sum(n) OVER (PARTITION BY run) AS share
    FROM batches JOIN shards USING (key) GROUP BY run, noise ORDER BY run, n DESC
(the groups are named: DuckDB's GROUP BY ALL refuses a window over an aggregate). A run trained on shards
of `curate export` logs their names (a repeated key's `KEY_n`); those shards' tables hold the same names
in `key` and the crawl's key in `source_key`.
Results stream in Arrow batches, so a large answer written to csv, json or parquet is never held whole; -o
may be a local path or any fsspec URL.

The csv and json writers are ours, not DuckDB's `COPY ... TO`: DuckDB's json widens float32 (0.27 becomes
0.27000001072883606) and writes NaN as a bare `NaN`, which is not JSON; its csv writes structs as
`{'a': 1}` and NaN as `nan`; and it cannot write to a Python stream, which stdout (the default) is.
"""

from __future__ import annotations

import contextlib
import csv
import decimal
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.dedup.keep import keep_file
from curate.errors import CurateError, first_line
from curate.fileio import atomic_open, filesystem, is_local, local_path
from curate.score.schema import open_score_folder
from curate.select.manifest import manifest_files
from curate.shards.paths import folder_files

FORMATS = ("table", "csv", "json", "parquet")


@dataclass(frozen=True)
class QuerySources:
    scores: str | None = None
    manifest: str | None = None
    keep: str | None = None
    shards: str | None = None
    runs: tuple[str, ...] = ()  # run folders of curate train, queried together as `batches`

    def views(self) -> dict[str, list[str]]:
        """View name -> the Parquet files behind it, for the sources given."""
        views = {}
        if self.scores:
            views["scores"] = list(open_score_folder(self.scores, "--scores").files)
        if self.manifest:
            files = manifest_files(local_path(self.manifest, "--manifest"))
            views["manifest"] = [str(path) for path in files]
        if self.keep:
            views["keep"] = [str(keep_file(self.keep))]
        if self.shards:
            views["shards"] = _shard_tables(self.shards)
        if self.runs:
            views["batches"] = _batch_logs(self.runs)
        if not views:
            raise CurateError(
                "nothing to query: give at least one of --scores, --manifest, --keep, --shards and --run"
            )
        return views


def _batch_logs(runs: tuple[str, ...]) -> list[str]:
    """RUN/batches.parquet of each run, as absolute paths: the view names each row's run after the folder
    that holds its file, so two runs of one name would be indistinguishable and are refused."""
    from curate.train.run import BATCHES_FILE, BATCHES_SCHEMA  # only here: it imports torch

    files, names = [], {}
    for run in runs:
        folder = local_path(run, "--run").resolve()
        path = folder / BATCHES_FILE
        if not path.is_file():
            raise CurateError(f"--run {run}: no {BATCHES_FILE} in it (curate train writes one in RUN/)")
        try:
            schema = pq.read_schema(path)
        except (OSError, pa.ArrowInvalid) as error:
            raise CurateError(f"--run {run}: cannot read {BATCHES_FILE}: {first_line(error)}") from None
        if not schema.remove_metadata().equals(BATCHES_SCHEMA):
            raise CurateError(f"--run {run}: {BATCHES_FILE} is not a batch log of curate train")
        if folder.name in names:
            raise CurateError(f"--run {run} and --run {names[folder.name]} are both named {folder.name!r}")
        names[folder.name] = run
        files.append(str(path))
    return files


# The query behind each view; `{files}` is the list of its Parquet files.
VIEW_SQL = {
    # the run is the name of the folder that holds the batches.parquet
    "batches": "SELECT parse_filename(parse_dirpath(filename)) AS run, step, key "
    "FROM read_parquet({files}, filename = true)",
}
DEFAULT_VIEW_SQL = "SELECT * FROM read_parquet({files}, union_by_name = true)"


def _shard_tables(path: str) -> list[str]:
    fs, fs_path = filesystem(path)
    if fs.isfile(fs_path):
        return [path]
    if not fs.isdir(fs_path):
        raise CurateError(f"--shards {path}: no such folder")
    tables = folder_files(path, ".parquet")
    if not tables:
        raise CurateError(f"--shards {path}: no .parquet files in it")
    return tables


def connect(sources: QuerySources) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per source."""
    con = duckdb.connect()
    protocols: set[str] = set()
    for name, paths in sources.views().items():
        for path in paths:
            if not is_local(path) and (fs := filesystem(path)[0]).protocol not in protocols:
                protocols.add(fs.protocol)
                con.register_filesystem(fs)  # DuckDB reads other filesystems through fsspec
        files = "[" + ", ".join("'" + path.replace("'", "''") + "'" for path in paths) + "]"
        try:
            con.execute(f"CREATE VIEW {name} AS " + VIEW_SQL.get(name, DEFAULT_VIEW_SQL).format(files=files))
        except duckdb.Error as error:
            con.close()
            raise CurateError(f"cannot read the {name} view: {first_line(error)}") from None
    return con


@contextlib.contextmanager
def run_query(sql: str, sources: QuerySources, batch_rows: int = 65_536) -> Iterator[pa.RecordBatchReader]:
    """Run `sql` against the views; yield its result as a stream of Arrow record batches.

    DuckDB errors (at planning or while the batches are read) become one-line CurateErrors.
    """
    if not sql.strip():
        raise CurateError("the SQL query is empty")
    con = connect(sources)
    try:
        try:
            relation = con.sql(sql)
        except duckdb.Error as error:
            raise CurateError(first_line(error)) from None
        if relation is None:
            raise CurateError(
                "the statement returned no rows to show; ask with SELECT (or DESCRIBE, SUMMARIZE)"
            )
        try:
            reader = relation.to_arrow_reader(batch_rows)
            yield _guarded(reader)
        except duckdb.Error as error:
            raise CurateError(first_line(error)) from None
    finally:
        con.close()


def _guarded(reader: pa.RecordBatchReader) -> pa.RecordBatchReader:
    """The same stream, with DuckDB's mid-stream errors turned into CurateErrors where they are read."""

    def batches() -> Iterator[pa.RecordBatch]:
        try:
            yield from reader
        except (duckdb.Error, pa.ArrowException) as error:
            raise CurateError(first_line(error)) from None

    return pa.RecordBatchReader.from_batches(reader.schema, batches())


def write_result(
    reader: pa.RecordBatchReader, fmt: str, handle: IO | None = None, path: str | None = None
) -> int:
    """Write the stream as csv or json (to the text `handle`) or parquet (to `path`); return the row count.

    json is JSON Lines: one object per row. Arrays (embeddings) become JSON arrays in both text formats,
    NaN becomes null.
    """
    if fmt == "parquet":
        if path is None:
            raise CurateError("--format parquet needs -o FILE")
        rows = 0
        with output_file(path, "wb") as raw, pq.ParquetWriter(raw, reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch)
                rows += batch.num_rows
        return rows
    if fmt not in ("csv", "json"):
        raise CurateError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if handle is None:
        with output_file(path, "w") as text:
            return write_result(reader, fmt, text)
    rows = 0
    if fmt == "csv":
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(reader.schema.names)
        for batch in map(shortest_floats, reader):
            for row in batch.to_pylist():
                writer.writerow(_csv_cell(v) for v in row.values())
            rows += batch.num_rows
    else:
        for batch in map(shortest_floats, reader):
            for row in batch.to_pylist():
                handle.write(json.dumps({k: jsonable(v) for k, v in row.items()}, ensure_ascii=False) + "\n")
            rows += batch.num_rows
    return rows


@contextlib.contextmanager
def output_file(path: str, mode: str) -> Iterator[IO]:
    """`atomic_open(path)`, with a folder that does not exist (or cannot be written) as a one-line error."""
    try:
        with atomic_open(path, mode) as handle:
            yield handle
    except OSError as error:
        raise CurateError(f"-o {path}: cannot write there ({error.strerror or first_line(error)})") from None


def shortest_floats(batch: pa.RecordBatch) -> pa.RecordBatch:
    """float32 columns (and lists of them) as the float64 of their shortest decimal text.

    A float32 such as round(similarity, 2) is 0.27000001072883606 when widened to a Python float; through
    Arrow's shortest round-trip text it prints as 0.27, which is what the user asked for.
    """
    columns = []
    for column in batch.columns:
        kind = column.type
        if pa.types.is_float32(kind) or pa.types.is_float16(kind):
            column = pc.cast(pc.cast(column, pa.string()), pa.float64())
        elif pa.types.is_list(kind) and pa.types.is_float32(kind.value_type):
            column = pc.cast(pc.cast(column, pa.list_(pa.string())), pa.list_(pa.float64()))
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def jsonable(value):
    """A Python value from Arrow as plain JSON: NaN and inf as null, decimals as numbers, bytes as hex,
    anything else (dates, times) as its text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else None
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def _csv_cell(value) -> str:
    value = jsonable(value)
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value)
    return value if isinstance(value, str) else str(value)
