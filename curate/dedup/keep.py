"""The keep-manifest of `curate dedup`: its schema, its one writer and its one reader.

`KEEP/keep.parquet`, one row per key that survives near-duplicate removal, in score-file (file, row) order:

| key, shard   | string  | which sample (`shard` is the source tar's name, as in the score file)        |
| similarity   | float32 | its image–text cosine under the reference: why it was the one kept          |
| cluster      | int32   | the k-means cluster it was compared within                                   |
| group_size   | int32   | samples in its near-duplicate group, itself included (1: it had none)        |

Rows that are not eligible (`curate.score.schema.eligible_rows`) are in no group and not in the file: a
keep-manifest names what may be selected. The file's metadata (`curate.*`) records the threshold, clusters,
seed, the score folder it was made from and that folder's content id (`curate.scores_content`: select
refuses a keep-manifest of scores since made anew in place); `summary.json` beside it the counts and time.
`curate select --keep KEEP` reads it (a null key or shard is refused). The folder is local.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import CurateError, first_line
from curate.fileio import absolute, atomic_open, local_path, read_table_with_schema, write_json
from curate.score.schema import ScoreFolder

KEEP_FILE = "keep.parquet"
SUMMARY_FILE = "summary.json"

SCORES_CONTENT_METADATA_KEY = "curate.scores_content"  # the content id of the score folder it was made from

KEEP_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string()),
        pa.field("shard", pa.string()),
        pa.field("similarity", pa.float32()),
        pa.field("cluster", pa.int32()),
        pa.field("group_size", pa.int32()),
    ]
)

# Fixed settings and a deterministic row order: the same scores, threshold and seed give the same bytes.
WRITER_OPTIONS = {"compression": "zstd", "compression_level": 3, "write_statistics": True}


def write_keep(folder: Path, table: pa.Table, metadata: dict[str, str]) -> Path:
    """Write `folder/keep.parquet` atomically from rows of KEEP_SCHEMA; its path."""
    path = folder / KEEP_FILE
    table = table.cast(KEEP_SCHEMA).replace_schema_metadata(metadata)
    with atomic_open(str(path), "wb") as handle:
        pq.write_table(table, handle, **WRITER_OPTIONS)
    return path


def write_summary(folder: Path, summary: dict) -> None:
    write_json(str(folder / SUMMARY_FILE), summary)


def keep_file(keep: str | Path) -> Path:
    """`KEEP/keep.parquet` for a keep folder; a path to the file itself is accepted too."""
    path = local_path(keep, "keep-manifest")
    if path.is_dir():
        path = path / KEEP_FILE
    if not path.is_file():
        raise CurateError(f"no keep-manifest at {keep} (expected {KEEP_FILE}, written by curate dedup)")
    _refuse_null_keys(path)
    return path


def _refuse_null_keys(path: Path) -> None:
    """A null key or shard matches no sample, so `select --keep` would keep nothing from it silently (and
    DuckDB's `key IN (...)` turns unknown): refused, by the footer's null counts (no row read)."""
    try:
        footer = pq.read_metadata(path)
        names = footer.schema.names
        for name in ("key", "shard"):
            column = names.index(name) if name in names else None
            if column is None:
                continue  # not a keep-manifest: the schema check says so
            nulls = 0
            for group in range(footer.num_row_groups):
                stats = footer.row_group(group).column(column).statistics
                nulls += stats.null_count if stats is not None and stats.has_null_count else 0
            if nulls:
                raise CurateError(
                    f"{path}: {nulls} rows with a null {name} (not written by curate dedup?): dedup anew"
                )
    except (OSError, pa.ArrowInvalid) as error:
        raise CurateError(f"cannot read keep-manifest {path}: {first_line(error)}") from None


def read_keep_keys(keep: str | Path, columns: tuple[str, ...] = ("key", "shard")) -> pa.Table:
    """The kept rows' `columns` (key and shard by default), checked against KEEP_SCHEMA."""
    table = read_table_with_schema(keep_file(keep), KEEP_SCHEMA, "a curate keep-manifest")
    return table.select(list(columns))


def check_keep_made_from(keep: str | Path, scores: ScoreFolder) -> None:
    """Refuse a keep-manifest made from `scores`' folder as it was before it was scored anew in place (its
    rows name samples of other scores); one made from another folder (another model's scores of the crawl)
    is the user's choice, and one from before the content id was recorded is not checked."""
    metadata = keep_metadata(keep)
    made_from, content = metadata.get("curate.scores"), metadata.get(SCORES_CONTENT_METADATA_KEY)
    if content and made_from == absolute(scores.path) and content != scores.content_id:
        raise CurateError(
            f"--keep {keep} was made from {made_from} as it was before (content id {content}, now "
            f"{scores.content_id}): those scores were made anew; dedup them anew"
        )


def keep_metadata(keep: str | Path) -> dict[str, str]:
    """The keep-manifest's `curate.*` metadata (threshold, clusters, seed, the score folder it came from)."""
    path = keep_file(keep)
    try:
        raw = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid) as error:
        raise CurateError(f"cannot read keep-manifest {path}: {first_line(error)}") from None
    return {k.decode(): v.decode() for k, v in raw.items() if k.startswith(b"curate.")}
