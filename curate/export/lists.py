"""The selection as lists, for what comes after curate: no shard is read and no image copied.

`--datacomp-subset FILE`: the selected samples' DataComp uids as DataComp's filtering track takes them, a
NumPy array of dtype `u8,u8` (each uid's two 64-bit halves), sorted and without repeats, which its
resharder loads with `np.load` and searches with `np.searchsorted` (a repeat would copy a sample twice).
`--url-list FILE`: the selected samples' `url` and `caption` (and `uid` where the pool has one) as Parquet,
one row each, in score-file order: img2dataset downloads exactly those (`--input_format parquet --url_col
url --caption_col caption`, `--save_additional_columns '["uid"]'` to keep the uid for the resharder).

Both join the manifest's (key, shard) rows with the score folder it was selected from (the manifest's
`curate.scores`), whose rows carry the pool's `uid` and `url` when `curate import` wrote it; DuckDB does the
join over the score files' small columns, spilling to disk beyond memory.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.errors import CurateError
from curate.fileio import atomic_open, spill_folder
from curate.imports.ids import uid_records
from curate.score.schema import open_score_folder
from curate.select.manifest import SCORES_METADATA_KEY, manifest_files, manifest_metadata

SELECTED_ROWS = """SELECT {columns}
FROM read_parquet($scores, filename = true, file_row_number = true, union_by_name = true) AS s
SEMI JOIN (SELECT DISTINCT key, shard FROM read_parquet($manifest)) AS m
    ON s.key = m.key AND s.shard = m.shard
ORDER BY s.filename, s.file_row_number"""


@dataclass
class ListsSummary:
    subset: int = 0  # uids written to the DataComp subset file
    urls: int = 0  # rows written to the url list
    no_url: int = 0  # selected samples whose url is null: left out of the url list


def write_lists(manifest: str, datacomp_subset: str | None, url_list: str | None) -> ListsSummary:
    """Write the DataComp subset file and/or the url list of the manifest's samples."""
    summary = ListsSummary()
    if datacomp_subset is not None:
        uids = _selected(manifest, ["uid"], "--datacomp-subset", "a DataComp pool's uid")["uid"]
        records = np.unique(uid_records(uids, "--datacomp-subset: the score folder"))  # sorted, no repeats
        with atomic_open(datacomp_subset, "wb") as handle:
            np.save(handle, records)
        summary.subset = len(records)
    if url_list is not None:
        table = _selected(manifest, ["url", "caption", "uid?"], "--url-list", "a pool's url")
        has_url = table["url"].is_valid()
        summary.no_url = table.num_rows - int(pc.sum(has_url).as_py() or 0)
        table = table.filter(has_url)
        with atomic_open(url_list, "wb") as handle:
            pq.write_table(table, handle)
        summary.urls = table.num_rows
    return summary


def _selected(manifest: str, columns: list[str], option: str, needs: str) -> pa.Table:
    """`columns` of the manifest's rows in its score folder (a name ending in ? only where it exists)."""
    scores = manifest_metadata(manifest).get(SCORES_METADATA_KEY)
    if not scores:
        raise CurateError(f"{option}: the manifest does not record the score folder it was selected from")
    folder = open_score_folder(scores, "the manifest's scores")
    names = set().union(*(pq.read_schema(path).names for path in folder.files))
    required = [c for c in columns if not c.endswith("?")]
    if missing := [c for c in required if c not in names]:
        raise CurateError(
            f"{option}: the score folder {scores} has no {', '.join(missing)} column (it needs {needs}: "
            "a folder written by curate import)"
        )
    present = [c.rstrip("?") for c in columns if c.rstrip("?") in names]
    query = SELECTED_ROWS.format(columns=", ".join(f's."{c}"' for c in present))
    files = {"scores": list(folder.files), "manifest": [str(p) for p in manifest_files(manifest)]}
    with (
        spill_folder("lists") as spill,
        contextlib.closing(duckdb.connect(config={"temp_directory": spill})) as con,
    ):
        return con.sql(query, params=files).to_arrow_table()
