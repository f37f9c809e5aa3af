"""Spill files of `curate dedup`: every scored row, routed by its cluster into one of a few bucket files.

A bucket holds a contiguous range of clusters, so a cluster is whole in one bucket and a bucket can be
grouped alone. Files are Arrow IPC streams (no compression: written once, read once, then deleted).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.fileio import writing

SPILL_COLUMNS = ("cluster", "file", "row", "key", "shard", "similarity", "image_emb")


def spill_schema(embed_dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("cluster", pa.int32()),
            pa.field("file", pa.int32()),  # id into the score folder's sorted files
            pa.field("row", pa.int64()),
            pa.field("key", pa.string()),
            pa.field("shard", pa.string()),
            pa.field("similarity", pa.float32()),
            pa.field("image_emb", pa.list_(pa.float16(), embed_dim)),  # as the score file stores it
        ]
    )


class Buckets(contextlib.AbstractContextManager):
    """`count` bucket files in `folder`; cluster c goes to bucket c // clusters_per_bucket."""

    def __init__(self, folder: Path, count: int, clusters_per_bucket: int, embed_dim: int):
        self.paths = [folder / f"bucket-{b:05d}.arrow" for b in range(count)]
        self.clusters_per_bucket = clusters_per_bucket
        self.schema = spill_schema(embed_dim)
        self._writers: dict[int, tuple[pa.NativeFile, pa.ipc.RecordBatchStreamWriter]] = {}

    def add(self, table: pa.Table) -> None:
        """Append `table`'s rows (SPILL_COLUMNS) to their buckets, in their order."""
        bucket = table["cluster"].to_numpy() // self.clusters_per_bucket
        for b in np.unique(bucket):
            with writing(self.paths[b]):
                if b not in self._writers:
                    sink = pa.OSFile(str(self.paths[b]), "wb")
                    self._writers[b] = sink, pa.ipc.new_stream(sink, self.schema)
                self._writers[b][1].write_table(table.filter(pa.array(bucket == b)).cast(self.schema))

    def read(self, b: int) -> pa.Table:
        """Bucket `b`'s rows (an empty table when no row went there)."""
        if not self.paths[b].exists():
            return self.schema.empty_table()
        with pa.OSFile(str(self.paths[b]), "rb") as source, pa.ipc.open_stream(source) as reader:
            return reader.read_all()

    def close(self) -> None:
        """Finish every bucket file (before reading any)."""
        for b, (sink, writer) in self._writers.items():
            with writing(self.paths[b]):
                writer.close()
                sink.close()
        self._writers = {}

    def __exit__(self, *exc) -> None:
        self.close()
