"""Score folders into seeded super-batches, with memory bounded by a window of super-batches.

Two passes. The index pass (DuckDB, no embedding column read unless `--where` names one) keeps the
samples that may enter: status ok, the `--where` predicate true, the first occurrence of each key, and,
with a learner, a key the learner scored ok. It holds O(N) small columns (key, shard, file and row ids):
tens of bytes per sample, fine for tens of millions, not for billions.

The window pass shuffles at two levels, like a webdataset shuffle buffer: score files are visited in a
seeded order and their kept rows' embeddings gathered until a window of at least `window` super-batches is
buffered; the window is permuted by the same seeded stream and cut into super-batches of B, and the rest
(< B) carries into the next window. So every score file is read once, memory holds about one window of
embeddings (plus the file being read), and each super-batch mixes the shards of its window, never one
shard alone unless a single score file outgrows the window. Only the very last super-batch may be short.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import CurateError, first_line
from curate.score.schema import OK, ScoreFolder


@dataclass
class SampleIndex:
    """The samples that may enter a super-batch, in (reference file, row) order."""

    key: pa.Array
    shard: pa.Array
    file: np.ndarray  # int32 id into the reference folder's files
    row: np.ndarray  # int64 row in that file
    learner_file: np.ndarray | None = None
    learner_row: np.ndarray | None = None
    counts: dict = field(default_factory=dict)  # why the others did not enter, and how many

    def __len__(self) -> int:
        return len(self.row)


def build_index(
    reference: ScoreFolder, learner: ScoreFolder | None = None, where: str | None = None
) -> SampleIndex:
    """Filter and join the small columns of every score file; see the module docstring for what is kept.

    Duplicate keys: the first occurrence (in file, row order) is kept and the others dropped and counted,
    so two copies of one sample can never share a super-batch (nor both reach the exported shards).
    """
    predicate = f"({where})" if where and where.strip() else "true"
    with (
        tempfile.TemporaryDirectory(prefix="curate-select-") as spill,
        # A large join or sort spills to `spill`, not into the working folder.
        contextlib.closing(duckdb.connect(config={"temp_directory": spill})) as con,
    ):
        try:
            con.register("ref_files", _file_table(reference.files))
            # Materialised once: the predicate (which may read embeddings) is evaluated in a single scan.
            con.execute(
                f"""CREATE TEMP TABLE ref AS
                SELECT key, shard, status, f.file_id AS file, file_row_number AS row,
                       coalesce(status = '{OK}' AND {predicate}, false) AS passed
                FROM read_parquet({_sql_list(reference.files)}, filename = true, file_row_number = true) AS s
                JOIN ref_files AS f ON f.path = s.filename"""
            )
        except duckdb.Error as error:
            raise CurateError(f"--where {where!r}: {first_line(error)}") from None
        by_status = con.sql(
            "SELECT status, count(*), count(*) FILTER (passed) FROM ref GROUP BY status ORDER BY status"
        ).fetchall()
        statuses = {status: n for status, n, _ in by_status}
        passed = sum(p for _, _, p in by_status)
        con.execute(
            """CREATE TEMP TABLE kept AS SELECT key, shard, file, row FROM ref WHERE passed
            QUALIFY row_number() OVER (PARTITION BY key ORDER BY file, row) = 1"""
        )
        unique = con.sql("SELECT count(*) FROM kept").fetchall()[0][0]
        seen = sum(statuses.values())
        ok = statuses.get(OK, 0)
        counts = {
            "seen": seen,
            "not_ok": dict(sorted((str(s), n) for s, n in statuses.items() if s != OK)),
            "where_filtered": ok - passed,
            "duplicate_keys": passed - unique,
        }
        if learner is None:
            table = con.sql("SELECT key, shard, file, row FROM kept ORDER BY file, row").to_arrow_table()
        else:
            con.register("learner_files", _file_table(learner.files))
            con.execute(
                f"""CREATE TEMP TABLE learner AS
                SELECT key, f.file_id AS learner_file, file_row_number AS learner_row, status = '{OK}' AS ok
                FROM read_parquet({_sql_list(learner.files)}, filename = true, file_row_number = true) AS s
                JOIN learner_files AS f ON f.path = s.filename
                QUALIFY row_number() OVER (PARTITION BY key ORDER BY learner_file, learner_row) = 1"""
            )
            con.execute("CREATE TEMP TABLE joined AS SELECT * FROM kept LEFT JOIN learner USING (key)")
            missing, not_ok = con.sql(
                "SELECT count(*) FILTER (ok IS NULL), count(*) FILTER (NOT ok) FROM joined"
            ).fetchall()[0]
            counts["learner_missing"] = missing
            counts["learner_not_ok"] = not_ok
            table = con.sql(
                "SELECT key, shard, file, row, learner_file, learner_row FROM joined WHERE ok "
                "ORDER BY file, row"
            ).to_arrow_table()
    counts["eligible"] = table.num_rows
    index = SampleIndex(
        key=table["key"].combine_chunks(),
        shard=table["shard"].combine_chunks().dictionary_encode(),  # a few distinct names, N rows
        file=table["file"].to_numpy().astype(np.int32),
        row=table["row"].to_numpy().astype(np.int64),
        counts=counts,
    )
    if learner is not None:
        index.learner_file = table["learner_file"].to_numpy().astype(np.int32)
        index.learner_row = table["learner_row"].to_numpy().astype(np.int64)
    return index


def _file_table(files: tuple[str, ...]) -> pa.Table:
    return pa.table(
        {"file_id": pa.array(range(len(files)), pa.int32()), "path": pa.array(files, pa.string())}
    )


def _sql_list(values: tuple[str, ...]) -> str:
    """A DuckDB list literal of strings (views cannot take prepared parameters)."""
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


Pair = tuple[np.ndarray, np.ndarray]  # (image, text) float16 [n, D]


@dataclass
class SuperBatch:
    index: int
    key: pa.Array
    shard: pa.Array
    reference: Pair
    learner: Pair | None

    def __len__(self) -> int:
        return len(self.key)

    @property
    def shards(self) -> int:
        """How many source shards its samples come from."""
        return len(pc.unique(self.shard))


@dataclass
class _Part:
    positions: np.ndarray  # rows of the SampleIndex
    reference: Pair
    learner: Pair | None


def iter_super_batches(
    index: SampleIndex,
    reference: ScoreFolder,
    learner: ScoreFolder | None,
    size: int,
    seed: int,
    window: int = 8,
) -> Iterator[SuperBatch]:
    """Super-batches of `size` samples in a seeded order; the last one holds the remainder (< size)."""
    if size < 1 or window < 1:
        raise CurateError(f"super-batch size and window must be positive, got {size} and {window}")
    rng = np.random.default_rng(seed)
    bounds = np.searchsorted(index.file, np.arange(len(reference.files) + 1))  # index is in file order
    buffer: list[_Part] = []
    buffered, emitted = 0, 0
    for file_id in rng.permutation(len(reference.files)):
        lo, hi = int(bounds[file_id]), int(bounds[file_id + 1])
        if lo == hi:
            continue
        positions = np.arange(lo, hi)
        ref_pair = reference.read_embeddings(file_id, index.row[lo:hi])
        learner_pair = _learner_embeddings(index, learner, lo, hi) if learner is not None else None
        buffer.append(_Part(positions, ref_pair, learner_pair))
        buffered += hi - lo
        if buffered >= window * size:
            batches, rest = _cut(buffer, index, size, rng, emitted)
            yield from batches
            emitted += len(batches)
            buffer, buffered = [rest], len(rest.positions)
    if not buffer:
        return
    batches, rest = _cut(buffer, index, size, rng, emitted)
    yield from batches
    if len(rest.positions):
        yield _super_batch(emitted + len(batches), rest, np.arange(len(rest.positions)), index)


def _cut(
    buffer: list[_Part], index: SampleIndex, size: int, rng: np.random.Generator, first: int
) -> tuple[list[SuperBatch], _Part]:
    """Permute the buffered window and cut it into full super-batches; return them and the remainder."""
    window = _concat(buffer)
    order = rng.permutation(len(window.positions))
    full = len(order) // size
    batches = [_super_batch(first + i, window, order[i * size : (i + 1) * size], index) for i in range(full)]
    return batches, _take(window, order[full * size :])


def _super_batch(number: int, part: _Part, order: np.ndarray, index: SampleIndex) -> SuperBatch:
    chosen = _take(part, order)
    positions = pa.array(chosen.positions)
    return SuperBatch(
        number, index.key.take(positions), index.shard.take(positions), chosen.reference, chosen.learner
    )


def _concat(parts: list[_Part]) -> _Part:
    if len(parts) == 1:
        return parts[0]
    learner = None
    if parts[0].learner is not None:
        learner = (
            np.concatenate([p.learner[0] for p in parts]),
            np.concatenate([p.learner[1] for p in parts]),
        )
    return _Part(
        np.concatenate([p.positions for p in parts]),
        (np.concatenate([p.reference[0] for p in parts]), np.concatenate([p.reference[1] for p in parts])),
        learner,
    )


def _take(part: _Part, order: np.ndarray) -> _Part:
    learner = None if part.learner is None else (part.learner[0][order], part.learner[1][order])
    return _Part(part.positions[order], (part.reference[0][order], part.reference[1][order]), learner)


def _learner_embeddings(index: SampleIndex, learner: ScoreFolder, lo: int, hi: int) -> Pair:
    """The learner's rows for index rows lo:hi; usually one learner file (the same shard, scored again)."""
    files, rows = index.learner_file[lo:hi], index.learner_row[lo:hi]
    image = text = None
    for file_id in np.unique(files):
        mask = files == file_id
        part_image, part_text = learner.read_embeddings(file_id, rows[mask])
        if image is None:
            image = np.empty((hi - lo, part_image.shape[1]), np.float16)
            text = np.empty_like(image)
        image[mask], text[mask] = part_image, part_text
    return image, text
