"""`--shards`: which of a pool's samples were downloaded, and where they are.

img2dataset writes beside each `NNNNN.tar` a `NNNNN.parquet` with a row per input row: its `key` in the
shard, `url`, `status` ("success" for the samples the tar holds) and the columns it was asked to keep
(DataComp's download keeps `uid`). The index holds one record per downloaded sample, sorted by its 128-bit
id (ids.py) of the column the pool's rows are named by, with its shard and key: about 40 bytes a sample
(0.4 GB for 10 M downloaded samples). Each downloaded sample is matched to one pool row at most, so two pool
rows that share a url never share a sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.errors import CurateError, first_line
from curate.fileio import basename, filesystem
from curate.imports.ids import sample_ids
from curate.shards import SUCCESS, expand_shards, shard_sibling


@dataclass
class DownloadedSamples:
    ids: np.ndarray  # `u8,u8`, sorted
    shard: np.ndarray  # int32: index into `names` of each record's shard
    key: pa.Array  # each record's key in its shard
    names: list[str]  # shard file names (00000.tar), what score files' `shard` column holds
    used: np.ndarray  # bool: matched to a pool row already

    def match(self, ids: np.ndarray) -> np.ndarray:
        """For each pool row's id, the record it is matched to (-1: none), each record used once, earlier
        rows first."""
        lo = np.searchsorted(self.ids, ids, "left")
        hi = np.searchsorted(self.ids, ids, "right")
        rows = np.full(len(ids), -1, np.int64)
        single = np.flatnonzero(hi - lo == 1)  # the common case: one downloaded sample has this id
        candidate = lo[single]
        _, first = np.unique(candidate, return_index=True)  # a pool id repeated within the file: its first
        take = np.zeros(len(single), bool)
        take[first] = True
        take &= ~self.used[candidate]
        rows[single[take]] = candidate[take]
        self.used[candidate[take]] = True
        for row in np.flatnonzero(hi - lo > 1):  # several downloads of one id (a url twice): the next free
            free = np.flatnonzero(~self.used[lo[row] : hi[row]])
            if len(free):
                rows[row] = lo[row] + free[0]
                self.used[rows[row]] = True
        return rows

    def shard_names(self, rows: np.ndarray) -> pa.Array:
        """Each matched row's shard file name, "" where `rows` is -1 (not downloaded)."""
        names = pa.array([*self.names, ""], pa.string())
        return names.take(pa.array(np.where(rows >= 0, self.shard[np.maximum(rows, 0)], len(self.names))))

    def keys(self, rows: np.ndarray, otherwise: pa.Array) -> pa.Array:
        """Each matched row's key in its shard; `otherwise`'s value where `rows` is -1."""
        matched = pa.array(rows >= 0)
        return pc.if_else(matched, self.key.take(pa.array(np.maximum(rows, 0))), otherwise)


def downloaded_samples(shards: str, column: str) -> DownloadedSamples:
    """The downloaded samples of every shard under `shards`, by their `column` (uid, key or url)."""
    paths = expand_shards(shards)
    ids, shard, keys = [], [], []
    for number, path in enumerate(paths):
        table = _shard_table(path, column)
        ids.append(sample_ids(table[column], column, shard_sibling(path, ".parquet")))
        shard.append(np.full(table.num_rows, number, np.int32))
        keys.append(table["key"].combine_chunks().cast(pa.string()))
    ids_all = np.concatenate(ids)
    order = np.argsort(ids_all, kind="stable")
    return DownloadedSamples(
        ids_all[order],
        np.concatenate(shard)[order],
        pa.concat_arrays(keys).take(pa.array(order)),
        [basename(path) for path in paths],
        np.zeros(len(order), bool),
    )


def _shard_table(path: str, column: str) -> pa.Table:
    """The key and `column` of a shard's samples that its tar holds (status success)."""
    parquet = shard_sibling(path, ".parquet")
    fs, fs_path = filesystem(parquet)
    try:
        with fs.open(fs_path, "rb") as handle:
            parquet_file = pq.ParquetFile(handle)
            names = parquet_file.schema_arrow.names
            missing = [c for c in dict.fromkeys(("key", column)) if c not in names]
            if missing:
                kept = (
                    " (DataComp's download keeps it: save_additional_columns=['uid'])"
                    if column == "uid"
                    else ""
                )
                raise CurateError(f"--shards: {parquet} has no {', '.join(missing)} column{kept}")
            wanted = [c for c in dict.fromkeys(("key", column, "status")) if c in names]
            table = parquet_file.read(columns=wanted)
    except (OSError, pa.ArrowInvalid) as error:
        raise CurateError(f"--shards: cannot read {parquet}: {first_line(error)}") from None
    if "status" in table.column_names:
        table = table.filter(pc.fill_null(pc.equal(table["status"], SUCCESS), False))
    return table.filter(pc.is_valid(table[column]))
