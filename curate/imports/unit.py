"""The unit of `curate import`: one pool file's aligned rows in, one score file out.

Embeddings are L2-normalised block by block (fp32 temporaries of a block, never of the file) and stored as
float16, as `curate score` stores its own. A row whose embedding is not finite (or all zeros, which has no
direction) gets status `nonfinite_embedding` and is never eligible. Where the pool says what each row's
cosine is (DataComp's `clip_l14_similarity_score`), that is the row's `similarity`: DataComp's CLIP score
exactly as its baselines rank by it; it must agree with the cosine of the row's own embeddings across the
file (correlation ≥ 0.9), which rows of the .npz and .parquet in different orders do not.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import CurateError
from curate.imports.config import ImportSummary
from curate.imports.downloaded import DownloadedSamples
from curate.imports.ids import sample_ids
from curate.imports.pool import PoolChunk
from curate.score.schema import NONFINITE, OK, SCORE_COLUMNS, write_score_file

BLOCK_ROWS = 1 << 16  # rows normalised at a time
MIN_CORRELATION = 0.9  # of the pool's similarity column with the embeddings' cosine, over one file
MIN_ROWS_TO_CORRELATE = 32  # fewer finite rows than this: too few to tell an alignment from chance


def import_chunk(
    chunk: PoolChunk,
    path: str,
    key_column: str,
    metadata: dict[str, str],
    downloaded: DownloadedSamples | None,
    summary: ImportSummary,
) -> None:
    """Write `chunk`'s score file at `path`: one row per pool row, in the pool's order."""
    pool_keys = unique_keys(chunk, key_column)
    ids = sample_ids(pool_keys, key_column, chunk.source) if key_column == "uid" or downloaded else None
    image, image_finite = normalised(chunk.image)
    text, text_finite = normalised(chunk.text)
    finite = image_finite & text_finite
    similarity = cosines(image, text)
    if chunk.similarity is not None:
        # A null reads as NaN: not finite, so not eligible.
        shipped = pc.cast(chunk.table[chunk.similarity], pa.float32()).to_numpy().astype(np.float32)
        check_alignment(chunk, shipped, similarity, finite)
        similarity = shipped
        finite &= np.isfinite(shipped)
    status = np.where(finite, OK, NONFINITE).tolist()
    shards: str | pa.Array = ""
    keys = pool_keys
    if downloaded is not None:
        rows = downloaded.match(ids)
        shards, keys = downloaded.shard_names(rows), downloaded.keys(rows, pool_keys)
        summary.matched += int((rows >= 0).sum())
        summary.unmatched += int((rows < 0).sum())
    captions = pc.cast(chunk.table[chunk.caption], pa.string())
    extra = pass_through(chunk.table, chunk.caption)
    write_score_file(path, shards, keys, captions, status, image, text, similarity, metadata, extra=extra)
    summary.files_done += 1
    summary.ok += int(finite.sum())
    if not finite.all():
        summary.failed[NONFINITE] += int((~finite).sum())


def unique_keys(chunk: PoolChunk, column: str) -> pa.Array:
    """The file's `column` as strings: present in every row and unique, else a one-line error."""
    if column not in chunk.table.column_names:
        raise CurateError(f"{chunk.source}: no {column} column to name its samples by")
    keys = pc.cast(chunk.table[column], pa.string()).combine_chunks()
    if keys.null_count:
        row = int(np.flatnonzero(keys.is_null().to_numpy(zero_copy_only=False))[0])
        raise CurateError(f"{chunk.source}: row {row} has no {column}")
    if pc.count_distinct(keys).as_py() != len(keys):
        counts = pc.value_counts(keys)
        repeated = counts.filter(pc.greater(counts.field("counts"), 1))[0]["values"].as_py()
        raise CurateError(
            f"{chunk.source}: {column} {repeated!r} names more than one row; a sample's key must be unique"
        )
    return keys


def normalised(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows scaled to unit length as float16, and which rows could be (finite, not all zeros); the others
    are zeros. A writable float16 array (an .npz member, read into memory) is normalised in place: one
    file's embeddings are held once, not twice."""
    in_place = rows.dtype == np.float16 and rows.flags.writeable and rows.flags.c_contiguous
    out = rows if in_place else np.empty(rows.shape, np.float16)
    finite = np.zeros(len(rows), bool)
    for lo in range(0, len(rows), BLOCK_ROWS):
        block = np.asarray(rows[lo : lo + BLOCK_ROWS], np.float32)
        with np.errstate(invalid="ignore", over="ignore"):
            norms = np.linalg.norm(block, axis=1)
        good = np.isfinite(norms) & (norms > 0)
        block[good] /= norms[good, None]
        block[~good] = 0
        out[lo : lo + len(block)] = block
        finite[lo : lo + len(block)] = good
    return out, finite


def cosines(image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """Row-wise <image_i, text_i> of unit float16 rows, accumulated in fp32 (as `curate score` does)."""
    out = np.empty(len(image), np.float32)
    for lo in range(0, len(image), BLOCK_ROWS):
        a = image[lo : lo + BLOCK_ROWS].astype(np.float32)
        out[lo : lo + len(a)] = np.einsum("ij,ij->i", a, text[lo : lo + len(a)].astype(np.float32))
    return out


def check_alignment(chunk: PoolChunk, shipped: np.ndarray, cosine: np.ndarray, finite: np.ndarray) -> None:
    """Refuse a file whose similarity column does not follow its embeddings' cosines: its arrays and its
    metadata are not in the same row order (the counts agreeing proves nothing about the order)."""
    both = finite & np.isfinite(shipped)
    if both.sum() < MIN_ROWS_TO_CORRELATE:
        return
    with np.errstate(invalid="ignore", divide="ignore"):
        correlation = float(np.corrcoef(shipped[both], cosine[both])[0, 1])
    if not correlation >= MIN_CORRELATION:
        raise CurateError(
            f"{chunk.source}: its {chunk.similarity} does not follow the cosine of its rows' embeddings "
            f"(correlation {correlation:.2f} < {MIN_CORRELATION}): are its embeddings in the metadata's row "
            "order? Refusing to import it"
        )


def pass_through(table: pa.Table, caption: str) -> pa.Table:
    """The pool's metadata columns to keep beside the scores (for `select --where`), the caption (which is
    the score file's own `caption`) left out; one named like a score column gets a `pool_` prefix
    (DataComp's `sha256` is the original image's digest, not the downloaded shard's)."""
    kept = [name for name in table.column_names if name != caption]
    renamed = [f"pool_{name}" if name in SCORE_COLUMNS else name for name in kept]
    return pa.table(table.select(kept).columns, names=renamed)
