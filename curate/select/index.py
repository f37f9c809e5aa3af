"""The index pass of `curate select`: which scored samples may enter a super-batch.

One DuckDB pass over the small columns of every score file (no embedding column is read unless `--where`
names one) keeps the samples that may enter: eligible rows (`curate.score.schema.ELIGIBLE_SQL`: status ok
with a finite similarity), the `--where` predicate true, the first occurrence of each key, a key that
`--keep` lists (a `curate dedup` output), and, with a learner, a key whose learner row is eligible too. It
holds O(N) small columns (key, shard, image digest, file and row ids): about a hundred bytes per sample,
fine for tens of millions, not for billions, so `select` runs it per partition (select/plan.py): N is a
partition's samples. The learner folder is matched by key whole (any of its files may hold a key), its key
column scanned once per partition, but only the partition's keys held. The predicate runs where it can
read the score files and no other file (`_sandbox`): a url list or a shared script cannot make `--where`
read this machine's files.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.dedup.keep import keep_file
from curate.errors import CurateError, first_line
from curate.score.schema import ELIGIBLE_SQL, OK, ScoreFolder, refuse_null_keys

# The reference's rows, each with whether it passes the filters. Materialised once, so the predicate
# (which may read embeddings) is evaluated in a single scan.
REFERENCE_ROWS = """CREATE TEMP TABLE ref AS
SELECT key, shard, {sha256} AS sha256, status, f.file_id AS file, file_row_number AS row,
       {eligible} AS eligible,
       {eligible} AND coalesce({predicate}, false) AS passed
FROM read_parquet({files}, filename = true, file_row_number = true, union_by_name = true) AS s
JOIN ref_files AS f ON f.path = s.filename"""
COUNT_BY_STATUS = """SELECT status, count(*), count(*) FILTER (passed), count(*) FILTER (NOT eligible)
FROM ref GROUP BY status ORDER BY status"""
# Duplicate keys: the first occurrence in (file, row) order is kept.
FIRST_OF_EACH_KEY = """CREATE TEMP TABLE kept AS SELECT key, shard, sha256, file, row FROM ref WHERE passed
QUALIFY row_number() OVER (PARTITION BY key ORDER BY file, row) = 1"""
# The learner's rows of the kept keys only: the learner folder is scanned whole (its key column), but only
# this partition's keys are held, so the join's memory is O(partition), not O(learner folder).
# A dedup keep-manifest is in score-file order, so the shard filter lets DuckDB skip the row groups of other
# partitions' shards by their statistics: a partition holds the keep keys of its own shards only.
NOT_IN_KEEP = """DELETE FROM kept WHERE key NOT IN (
SELECT key FROM read_parquet({keep}) WHERE shard IN (SELECT DISTINCT shard FROM kept))"""
LEARNER_ROWS = """CREATE TEMP TABLE learner AS
SELECT key, f.file_id AS learner_file, file_row_number AS learner_row,
       {eligible} AS ok
FROM read_parquet({files}, filename = true, file_row_number = true) AS s
JOIN learner_files AS f ON f.path = s.filename
WHERE key IN (SELECT key FROM kept)
QUALIFY row_number() OVER (PARTITION BY key ORDER BY learner_file, learner_row) = 1"""


@dataclass
class SampleIndex:
    """The samples that may enter a super-batch, in (reference file, row) order."""

    key: pa.Array
    shard: pa.Array
    sha256: pa.Array  # hex digest of each image as scored (null from score files older than the column)
    file: np.ndarray  # int32 id into the reference folder's files
    row: np.ndarray  # int64 row in that file
    learner_file: np.ndarray | None = None
    learner_row: np.ndarray | None = None
    counts: dict = field(default_factory=dict)  # why the others did not enter, and how many

    def __len__(self) -> int:
        return len(self.row)


def build_index(
    reference: ScoreFolder,
    learner: ScoreFolder | None = None,
    where: str | None = None,
    keep: str | None = None,
) -> SampleIndex:
    """Filter and join the small columns of every score file; the module docstring says what is kept.

    `keep`: a `curate dedup` keep-manifest; a sample whose key it does not list is left out (`not_kept`).

    Duplicate keys: the first occurrence (in file, row order) is kept and the others dropped and counted,
    so two copies of one sample can never share a super-batch (nor both reach the exported shards).
    """
    predicate = f"({where})" if where and where.strip() else "true"
    keep_path = str(keep_file(keep)) if keep else None
    files = reference.files + (learner.files if learner else ()) + ((keep_path,) if keep_path else ())
    with (
        tempfile.TemporaryDirectory(prefix="curate-select-") as spill,
        contextlib.closing(_sandbox(files, spill)) as con,
    ):
        try:
            con.register("ref_files", _file_table(reference.files))
            con.execute(
                REFERENCE_ROWS.format(
                    eligible=ELIGIBLE_SQL,
                    predicate=predicate,
                    files=_sql_list(reference.files),
                    sha256="sha256" if _has_column(reference.files, "sha256") else "NULL::VARCHAR",
                )
            )
        except duckdb.Error as error:
            denied = isinstance(error, duckdb.PermissionException)
            scope = " (--where may read the score files only)" if denied else ""
            raise CurateError(f"--where {where!r}: {first_line(error)}{scope}") from None
        by_status = con.sql(COUNT_BY_STATUS).fetchall()
        statuses = {status: n for status, n, _, _ in by_status}
        passed = sum(p for _, _, p, _ in by_status)
        # ok rows that are not eligible: embeddings NaN or infinite (scored before score refused them)
        nonfinite = sum(bad for status, _, _, bad in by_status if status == OK)
        con.execute(FIRST_OF_EACH_KEY)
        _refuse_null_keys(con, reference)
        unique = con.sql("SELECT count(*) FROM kept").fetchall()[0][0]
        not_kept = (
            con.execute(NOT_IN_KEEP.format(keep=_sql_list((keep_path,)))).fetchall()[0][0] if keep_path else 0
        )
        seen = sum(statuses.values())
        ok = statuses.get(OK, 0)
        counts = {
            "seen": seen,
            "not_ok": dict(sorted((str(s), n) for s, n in statuses.items() if s != OK)),
            "nonfinite": nonfinite,
            "where_filtered": ok - nonfinite - passed,
            "duplicate_keys": passed - unique,
        }
        if keep_path:
            counts["not_kept"] = not_kept
        if learner is None:
            table = con.sql(
                "SELECT key, shard, sha256, file, row FROM kept ORDER BY file, row"
            ).to_arrow_table()
        else:
            con.register("learner_files", _file_table(learner.files))
            con.execute(LEARNER_ROWS.format(eligible=ELIGIBLE_SQL, files=_sql_list(learner.files)))
            con.execute("CREATE TEMP TABLE joined AS SELECT * FROM kept LEFT JOIN learner USING (key)")
            missing, not_ok = con.sql(
                "SELECT count(*) FILTER (ok IS NULL), count(*) FILTER (NOT ok) FROM joined"
            ).fetchall()[0]
            counts["learner_missing"] = missing
            counts["learner_not_ok"] = not_ok
            table = con.sql(
                "SELECT key, shard, sha256, file, row, learner_file, learner_row FROM joined WHERE ok "
                "ORDER BY file, row"
            ).to_arrow_table()
    counts["eligible"] = table.num_rows
    index = SampleIndex(
        key=table["key"].combine_chunks(),
        shard=table["shard"].combine_chunks().dictionary_encode(),  # a few distinct names, N rows
        sha256=table["sha256"].combine_chunks(),
        file=table["file"].to_numpy().astype(np.int32),
        row=table["row"].to_numpy().astype(np.int64),
        counts=counts,
    )
    if learner is not None:
        index.learner_file = table["learner_file"].to_numpy().astype(np.int32)
        index.learner_row = table["learner_row"].to_numpy().astype(np.int64)
    return index


def _sandbox(files: tuple[str, ...], spill: str) -> duckdb.DuckDBPyConnection:
    """A connection for SQL that pastes in the user's --where: it reads `files` (the score files) and
    spills a large join or sort to `spill` (not the working folder), and nothing else: no other file on
    this machine, no network, no extension; `curate query` is the SQL console with full access."""
    con = duckdb.connect(config={"temp_directory": spill})
    con.execute(f"SET allowed_paths = {_sql_list(files)}")
    con.execute(f"SET allowed_directories = {_sql_list((spill,))}")
    con.execute("SET enable_external_access = false")  # for good: DuckDB refuses to turn it back on
    return con


def _has_column(files: tuple[str, ...], name: str) -> bool:
    """Whether any of `files` has column `name` (score files gained `sha256` after their first release)."""
    return any(name in pq.read_schema(path).names for path in files)


def _file_table(files: tuple[str, ...]) -> pa.Table:
    return pa.table(
        {"file_id": pa.array(range(len(files)), pa.int32()), "path": pa.array(files, pa.string())}
    )


def _sql_list(values: tuple[str, ...]) -> str:
    """A DuckDB list literal of strings (views cannot take prepared parameters)."""
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def _refuse_null_keys(con: duckdb.DuckDBPyConnection, reference: ScoreFolder) -> None:
    """An eligible row without a key or shard would reach the manifest, which no reader takes."""
    nulls, file = con.sql(
        "SELECT count(*), min(file) FROM kept WHERE key IS NULL OR shard IS NULL"
    ).fetchall()[0]
    if nulls:
        refuse_null_keys(reference.files[file], nulls)
