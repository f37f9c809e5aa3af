"""What both pool layouts give the import: files, and each file's rows as one aligned chunk.

A pool file is one metadata Parquet and its embedding arrays, rows in the same order; the import writes one
score file per pool file, named after it, so a rerun skips what is done. Alignment is checked where it can
be (row counts, D, dtype) and refused in one line: rows are never paired up by position when the counts
differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import CurateError, first_line


@dataclass(frozen=True)
class PoolFile:
    name: str  # the score file's name without .parquet; unique in the pool
    metadata: str  # the Parquet file of its rows
    image: str  # where its image embeddings are (a .npz holding several arrays, or an .npy)
    text: str


@dataclass
class PoolChunk:
    """One pool file's rows: its metadata and both embeddings, row i of each the same sample."""

    source: str  # the file, for messages
    table: pa.Table
    image: np.ndarray  # [N, D], any float dtype (a memory map for .npy)
    text: np.ndarray
    caption: str  # the metadata column that holds the caption
    similarity: str | None = None  # the column where the pool says what cos(image, text) is, if it does


def checked_chunk(chunk: PoolChunk, image_name: str, text_name: str, dim: int | None) -> PoolChunk:
    """`chunk` if its arrays are [N, D] floats with N the metadata's rows and D (`dim` when given) agreeing;
    else a one-line error naming the file and what disagrees."""
    rows = chunk.table.num_rows
    for name, array in ((image_name, chunk.image), (text_name, chunk.text)):
        if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
            raise CurateError(
                f"{chunk.source}: {name} is not an [N, D] float array (shape {array.shape}, {array.dtype})"
            )
        if array.shape[0] != rows:
            raise CurateError(
                f"{chunk.source}: {name} holds {array.shape[0]} rows but the metadata {rows}: the files are "
                "not row-aligned, refusing to pair them"
            )
    if chunk.image.shape[1] != chunk.text.shape[1]:
        raise CurateError(
            f"{chunk.source}: {image_name} has D = {chunk.image.shape[1]} but {text_name} "
            f"D = {chunk.text.shape[1]}"
        )
    if dim is not None and chunk.image.shape[1] != dim:
        raise CurateError(f"{chunk.source}: embeddings have D = {chunk.image.shape[1]}, expected {dim}")
    for column in (chunk.caption, chunk.similarity):
        if column is not None and column not in chunk.table.column_names:
            raise CurateError(f"{chunk.source}: no {column} column in its metadata")
    return chunk


def read_metadata(path: str) -> pa.Table:
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as error:
        raise CurateError(f"cannot read {path}: {first_line(error)}") from None


def unique_names(files: list[PoolFile], pool: str) -> list[PoolFile]:
    """`files` if their names differ (each names a score file), else a one-line error."""
    seen: dict[str, str] = {}
    for file in files:
        if file.name in seen:
            raise CurateError(
                f"{pool}: {seen[file.name]} and {file.metadata} would write the same score file "
                f"{file.name}.parquet; import them into two folders"
            )
        seen[file.name] = file.metadata
    return files


def row_counts(files: list[PoolFile]) -> int:
    """The pool's rows, from the Parquet footers (a progress bar's total)."""
    try:
        return sum(pq.read_metadata(file.metadata).num_rows for file in files)
    except (OSError, pa.ArrowInvalid) as error:
        raise CurateError(f"cannot read the pool's metadata: {first_line(error)}") from None
