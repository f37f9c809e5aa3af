"""The score artefact (docs/reference/formats.md, "Scores"): its schema, its one writer and its one reader.

`SCORES/{shard}.parquet`, one file per input shard:

| key, shard, caption | string | which sample, as in the shard                            |
| image_emb, text_emb | fixed_size_list<float16>[D] | L2-normalised embeddings (zeros if not ok) |
| similarity          | float32 | cosine(image_emb, text_emb), the classic "CLIP score"   |
| status              | string  | "ok", or why the sample could not be scored             |
| sha256              | string  | hex digest of the image bytes in the tar (`export` checks it) |

File metadata `curate.*` holds the model's name, tag, t (logit_scale, not log t), b, embed_dim, image size and
the curate version: selection rebuilds the reference's pair losses from these alone; and the pixels the
images were encoded at (`curate.resolution`, below the image size for low-resolution scoring). It also
holds what scoring the file cost (`curate.flops`, `curate.seconds`) and, when the model was a checkpoint,
its absolute path and steps (`curate.checkpoint`, `curate.checkpoint_step`): the links a learner's cost
follows upstream, and the sha256 of its weights (`curate.weights`). A folder holds the scores of one model
(one set of weights) at one resolution: `open_score_folder` checks it, and every stage that reads scores
goes through it. Score folders are local (`local_path`): DuckDB's index pass and the memory-mapped reads need
files.

A score file may carry extra columns after these (`write_score_file(extra=...)`): `curate import` passes a
pool's metadata through (DataComp's `uid`, `url`, `clip_l14_similarity_score`, ...), so `select --where`
can filter on them. Every reader names the columns it reads, and DuckDB reads the folder by name
(`union_by_name`), so a file without them reads as before. Such a folder's files record that the
embeddings were imported, not computed (`curate.imported`: what they are, with `curate.flops` 0).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.errors import CurateError, first_line
from curate.fileio import atomic_open, basename, local_path
from curate.shards.schema import OK

NONFINITE = "nonfinite_embedding"  # the status of a row the model embedded as NaN or infinity
IMPORTED_METADATA_KEY = "curate.imported"  # what imported embeddings are; absent when a model computed them

__all__ = [
    "ELIGIBILITY_COLUMNS",
    "ELIGIBLE_SQL",
    "IMPORTED_METADATA_KEY",
    "NONFINITE",
    "OK",
    "METADATA_KEYS",
    "SCORE_COLUMNS",
    "ScoreFolder",
    "ScoreMetadata",
    "embeddings_array",
    "checked_embeddings",
    "embeddings_numpy",
    "ScoringCost",
    "check_same_model",
    "comparable",
    "cost_metadata",
    "eligible_rows",
    "is_score_file",
    "open_score_folder",
    "read_scoring_cost",
    "score_file",
    "score_schema",
    "write_score_file",
]
METADATA_KEYS = (
    "curate.model",
    "curate.pretrained",
    "curate.logit_scale",
    "curate.logit_bias",
    "curate.embed_dim",
    "curate.image_size",
    "curate.version",
)
EMBEDDINGS = ("image_emb", "text_emb")
# Rows per Parquet row group: the writer holds one group's encoded columns, not the file's (a 100k-row file of
# D = 768 would otherwise hold another 0.6 GB while it is written). Readers read whole columns either way.
ROW_GROUP_ROWS = 1 << 16


def score_schema(
    embed_dim: int, metadata: dict[str, str] | None = None, extra: pa.Schema | None = None
) -> pa.Schema:
    """The columns of a score file, then `extra`'s (pass-through columns; none from `curate score`)."""
    embedding = pa.list_(pa.float16(), embed_dim)
    schema = pa.schema(
        [
            pa.field("key", pa.string()),
            pa.field("shard", pa.string()),
            pa.field("caption", pa.string()),
            pa.field("image_emb", embedding),
            pa.field("text_emb", embedding),
            pa.field("similarity", pa.float32()),
            pa.field("status", pa.string()),
            pa.field("sha256", pa.string()),
            *(extra or ()),
        ]
    )
    return schema.with_metadata(metadata) if metadata else schema


SCORE_COLUMNS = tuple(score_schema(1).names)  # what an extra column may not be named


def score_file(scores: str | Path, shard: str) -> Path:
    """`SCORES/00042.parquet` for shard `00042.tar`."""
    return local_path(scores, "score folder") / _file_name(shard)


def _file_name(shard: str) -> str:
    return f"{basename(shard).removesuffix('.tar')}.parquet"


def embeddings_array(values: np.ndarray, valid: np.ndarray) -> pa.FixedSizeListArray:
    """(N, D) float16 rows -> a fixed_size_list column, a zero row where `valid` is False.

    Zeros, not nulls: Parquet readers before apache/arrow#35692's fix (pyarrow's among them, seen on a GPU
    machine's older pyarrow) fail on a null fixed-size list ("Expected all lists to be of size=D but index i
    had size=0"). `status` says which rows hold no embedding; `similarity` is null there."""
    rows = np.ascontiguousarray(values, dtype=np.float16)
    if not valid.all():  # a copy only when rows must be zeroed: the caller's array is not ours to change
        rows = rows.copy()
        rows[~valid] = 0
    return pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), values.shape[1])


def refuse_null_keys(path: str, nulls: int) -> None:
    """Eligible rows without a key or shard (a file from another writer) cannot be named by a manifest or a
    keep file: refused in one line naming the score file."""
    if nulls:
        raise CurateError(
            f"score file {path}: {nulls} eligible rows with a null key or shard (written by another tool?): "
            "re-score or re-import it"
        )


def checked_embeddings(
    column: pa.ChunkedArray | pa.FixedSizeListArray, path: str, embed_dim: int, rows: np.ndarray | None = None
) -> np.ndarray:
    """`embeddings_numpy` of `column`'s `rows` (None: all of them), refused in one line when the column's
    width is not the file's `curate.embed_dim` or a returned row holds a NaN or an infinity. curate's writer
    marks such a row `nonfinite_embedding`; a file from another writer may not, and one NaN would make every
    pair loss of its super-batch NaN."""
    if column.type.list_size != embed_dim:
        raise CurateError(
            f"score file {path}: embeddings of width {column.type.list_size}, but its metadata says "
            f"{embed_dim} (written by another tool?): re-score or re-import it"
        )
    values = embeddings_numpy(column)
    if rows is not None:
        values = values[rows]
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        first = int(np.flatnonzero(~finite)[0])
        raise CurateError(
            f"score file {path}: {int((~finite).sum())} rows with status ok hold a non-finite embedding "
            f"(row {first if rows is None else int(rows[first])} first; written by another tool, or "
            "damaged?): re-score or re-import it"
        )
    return values


def embeddings_numpy(column: pa.ChunkedArray | pa.FixedSizeListArray) -> np.ndarray:
    """A fixed_size_list<float16> column as an (N, D) float16 array, nulls as zero rows.

    Reads the value buffer directly: pyarrow's own float16 conversion is several times slower.
    """
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    dim = column.type.list_size
    parts = []
    for chunk in chunks:
        values = chunk.values  # includes the slots of null rows, so rows stay aligned
        buffer = values.buffers()[1]
        flat = np.frombuffer(buffer, dtype=np.float16, count=len(values) + values.offset)[values.offset :]
        parts.append(flat.reshape(-1, dim)[chunk.offset : chunk.offset + len(chunk)])
    return np.concatenate(parts) if parts else np.zeros((0, dim), np.float16)


@dataclass(frozen=True)
class ScoreMetadata:
    model: str
    pretrained: str
    logit_scale: float
    logit_bias: float
    embed_dim: int
    image_size: int
    version: str
    weights: str = ""  # sha256 of the model's state dict ("" in files written before it was recorded)
    resolution: int = 0  # pixels the images were encoded at (0: not recorded, a file from before it was)

    @property
    def encoded_at(self) -> int:
        """The pixels the images were encoded at: a file that does not record it was scored before curate
        could encode below the model's own size, so at that size."""
        return self.resolution or self.image_size

    @property
    def identity(self) -> tuple:
        """What must agree for two files to hold one model's scores (the version may differ)."""
        return self.model, self.pretrained, self.logit_scale, self.logit_bias, self.embed_dim

    def same_model(self, other: ScoreMetadata) -> bool:
        """One model: the same identity and, where both files know them, the same weights (so a
        checkpoint replaced behind the same path is a different model)."""
        known = self.weights and other.weights
        return self.identity == other.identity and (not known or self.weights == other.weights)

    @classmethod
    def from_strings(cls, meta: dict[str, str], source: str) -> ScoreMetadata:
        missing = [k for k in METADATA_KEYS if k not in meta]
        if missing:
            raise CurateError(
                f"{source} is not a curate score file (no {', '.join(missing)} in its metadata)"
            )
        try:
            return cls(
                model=meta["curate.model"],
                pretrained=meta["curate.pretrained"],
                logit_scale=float(meta["curate.logit_scale"]),
                logit_bias=float(meta["curate.logit_bias"]),
                embed_dim=int(meta["curate.embed_dim"]),
                image_size=int(meta["curate.image_size"]),
                version=meta["curate.version"],
                weights=meta.get("curate.weights", ""),
                resolution=int(meta.get("curate.resolution", 0)),
            )
        except ValueError as error:
            raise CurateError(f"{source}: malformed curate metadata ({first_line(error)})") from None

    @classmethod
    def read(cls, path: str | Path) -> ScoreMetadata:
        return cls.from_strings(_file_metadata(path), str(path))

    def as_strings(self) -> dict[str, str]:
        """The file metadata a score file carries (the inverse of `from_strings`: an unrecorded resolution
        stays unwritten)."""
        fields = {k: v for k, v in asdict(self).items() if k != "resolution" or v}
        return {f"curate.{k}": repr(v) if isinstance(v, float) else str(v) for k, v in fields.items()}


def _file_metadata(path: str | Path) -> dict[str, str]:
    try:
        raw = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid) as error:
        raise CurateError(f"cannot read score file {path}: {first_line(error)}") from None
    return {k.decode(): v.decode() for k, v in raw.items() if k.startswith(b"curate.")}


# ---------------------------------------------------------------------------------------------- cost


def cost_metadata(flops: float, seconds: float) -> dict[str, str]:
    """What scoring one shard cost, as its file records it (beside the model's metadata)."""
    return {"curate.flops": repr(float(flops)), "curate.seconds": repr(float(seconds))}


@dataclass(frozen=True)
class ScoringCost:
    """What scoring a folder cost, summed over its files, and the checkpoint that scored it."""

    flops: float
    seconds: float
    files: int
    uncounted: int  # files that record no cost (written before curate recorded it)
    checkpoint: str  # absolute path of the checkpoint that scored it; "" when the model was not one
    checkpoint_step: int | None  # its steps trained, for a checkpoint of curate train
    imported: str = ""  # what the embeddings are when they were imported, not computed ("": a model's)


def read_scoring_cost(path: str | Path) -> ScoringCost:
    folder = local_path(path, "score folder")
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise CurateError(f"score folder {path} holds no score files (*.parquet, written by curate score)")
    flops = seconds = 0.0
    uncounted = 0
    for file in files:
        meta = _file_metadata(file)
        try:
            flops += float(meta["curate.flops"])
            seconds += float(meta["curate.seconds"])
        except (KeyError, ValueError):
            uncounted += 1
    first = _file_metadata(files[0])
    step = first.get("curate.checkpoint_step", "")
    return ScoringCost(
        flops,
        seconds,
        len(files),
        uncounted,
        first.get("curate.checkpoint", ""),
        int(step) if step else None,
        first.get(IMPORTED_METADATA_KEY, ""),
    )


def comparable(path: str | Path) -> pa.Table:
    """A score file's rows and metadata without `curate.seconds`, the wall time of the run that wrote it:
    what two runs that agree (resumed or not, local or Ray) have in common, for `Table.equals(...,
    check_metadata=True)`."""
    table = pq.read_table(path)
    metadata = {k: v for k, v in (table.schema.metadata or {}).items() if k != b"curate.seconds"}
    return table.replace_schema_metadata(metadata)


def is_score_file(path: str | Path) -> bool:
    try:
        ScoreMetadata.read(path)
    except CurateError:
        return False
    return True


# ---------------------------------------------------------------------------------------------- writer


def write_score_file(
    path: str | Path,
    shard: str | Sequence[str] | pa.Array,
    keys: Sequence[str] | pa.Array,
    captions: Sequence[str] | pa.Array,
    status: Sequence[str],
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    similarity: np.ndarray,
    metadata: dict[str, str],
    sha256: list[str | None] | None = None,
    extra: pa.Table | None = None,
) -> None:
    """Write one score file atomically. Embedding rows of samples whose status is not ok are ignored
    (stored as zeros, their similarity as null), so callers may pass anything there. `shard`: the tar every
    row came from, or each row's (an imported pool file's rows come from many shards, or none yet: "").
    `sha256`: each row's image digest (null where unknown). `extra`: columns written after the score
    columns, one row per key, named unlike them."""
    valid = pc.equal(pa.array(status, pa.string()), OK).to_numpy(zero_copy_only=False)
    if extra is not None and (clash := set(extra.column_names) & set(SCORE_COLUMNS)):
        raise ValueError(f"extra columns may not be named like score columns: {sorted(clash)}")
    schema = score_schema(image_emb.shape[1], metadata, extra.schema if extra is not None else None)
    shards = [shard] * len(keys) if isinstance(shard, str) else shard
    columns = {
        "key": pa.array(keys, pa.string()),
        "shard": pa.array(shards, pa.string()),
        "caption": pa.array(captions, pa.string()),
        "image_emb": embeddings_array(image_emb, valid),
        "text_emb": embeddings_array(text_emb, valid),
        "similarity": pa.array(np.asarray(similarity, np.float32), pa.float32(), mask=~valid),
        "status": pa.array(status, pa.string()),
        "sha256": pa.array(sha256 if sha256 is not None else [None] * len(keys), pa.string()),
    }
    if extra is not None:
        columns.update(zip(extra.column_names, extra.columns, strict=True))
    table = pa.table(columns, schema=schema)
    with atomic_open(str(path), "wb") as handle:
        pq.write_table(table, handle, row_group_size=ROW_GROUP_ROWS)


# ---------------------------------------------------------------------------------------------- eligible rows

# The rows a stage may use: `select` draws them (of the reference and of the learner), `dedup` compares
# them, the trainer's online reference scores them. Status ok and a finite similarity: the similarity is
# the cosine of the row's two embeddings, computed from them, so a NaN or infinity in either makes it NaN,
# and one float per row stands for 2·D (select's index pass never reads an embedding). `curate score` writes
# such a row as NONFINITE; files scored before it did hold it as ok with a NaN similarity. One rule, written
# for the two engines its readers run, DuckDB and Arrow (a null is never eligible in either):
ELIGIBILITY_COLUMNS = ("status", "similarity")
ELIGIBLE_SQL = f"coalesce(status = '{OK}' AND isfinite(similarity), false)"


def eligible_rows(table: pa.Table) -> np.ndarray:
    """`ELIGIBLE_SQL` for each row of `table` (which holds `ELIGIBILITY_COLUMNS`), as a bool mask."""
    eligible = pc.and_(pc.equal(table["status"], OK), pc.is_finite(table["similarity"]))
    return pc.fill_null(eligible, False).to_numpy(zero_copy_only=False)


# ---------------------------------------------------------------------------------------------- reader


@dataclass(frozen=True)
class ScoreFolder:
    """A folder of score files written by one model; `files` sorted, so ids into it are stable."""

    path: str
    files: tuple[str, ...]
    metadata: ScoreMetadata

    def file_of(self, shard: str) -> int | None:
        """The id of the score file of `shard` (a tar's name, path or URL); None when the folder has none."""
        return self._ids_by_name.get(_file_name(shard))

    def read_file(self, file_id: int, columns: Sequence[str]) -> pa.Table:
        """`columns` of one score file, every row in file order."""
        path = self.files[file_id]
        try:
            return pq.read_table(path, columns=list(columns))
        except (OSError, pa.ArrowInvalid, KeyError) as error:
            raise CurateError(f"cannot read score file {path}: {first_line(error)}") from None

    def read_columns(self, columns: Sequence[str], eligible_only: bool = False) -> pa.Table:
        """`columns` of every file, concatenated in file order (its eligible rows only, `eligible_only`)."""
        if not eligible_only:
            return pa.concat_tables(self.read_file(i, columns) for i in range(len(self.files)))
        wanted = [*columns, *(c for c in ELIGIBILITY_COLUMNS if c not in columns)]
        parts = []
        for file_id in range(len(self.files)):
            table = self.read_file(file_id, wanted)
            parts.append(table.filter(pa.array(eligible_rows(table))).select(list(columns)))
        return pa.concat_tables(parts)

    def read_embeddings(self, file_id: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows `rows` of one file's image_emb and text_emb, as (n, D) float16 arrays."""
        table, path, dim = self.read_file(file_id, EMBEDDINGS), self.files[file_id], self.metadata.embed_dim
        return (
            checked_embeddings(table["image_emb"], path, dim, rows),
            checked_embeddings(table["text_emb"], path, dim, rows),
        )

    def read_similarity(self, file_id: int, rows: np.ndarray) -> np.ndarray:
        """Rows `rows` of one file's similarity column, float32 (NaN where it is null: not ok)."""
        column = self.read_file(file_id, ["similarity"])["similarity"].combine_chunks()
        return column.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)[rows]

    @cached_property
    def content_id(self) -> str:
        """What these scores are, for the readers that combine them with other artefacts (a selection's
        parts, a resumed run): a digest of the scoring model (its weights' sha256) and of every file's name,
        size and row count. Reading it costs a footer per file, never the embeddings, so a folder re-scored
        in place by another model, or with files added or replaced, has another id."""
        digest = hashlib.sha256(repr(self.metadata.identity).encode())
        for path in self.files:
            try:
                footer = pq.read_metadata(path)
            except (OSError, pa.ArrowInvalid) as error:
                raise CurateError(f"cannot read score file {path}: {first_line(error)}") from None
            weights = (footer.metadata or {}).get(b"curate.weights", b"").decode()
            size = os.path.getsize(path)
            digest.update(f"{Path(path).name}\t{size}\t{footer.num_rows}\t{weights}\n".encode())
        return digest.hexdigest()[:16]

    @cached_property
    def _ids_by_name(self) -> dict[str, int]:
        return {Path(path).name: file_id for file_id, path in enumerate(self.files)}


def open_score_folder(path: str | Path, role: str = "scores") -> ScoreFolder:
    """Find the score files of `path` and check they all come from one model at one resolution (pair losses
    of embeddings encoded at two sizes are not one model's, and selection would mix them silently)."""
    folder = local_path(path, role)
    if not folder.is_dir():
        raise CurateError(f"{role} folder {path} does not exist (write one with curate score)")
    files = tuple(str(p) for p in sorted(folder.glob("*.parquet")))
    if not files:
        raise CurateError(f"{role} folder {path} holds no score files (*.parquet, written by curate score)")
    metadata = ScoreMetadata.read(files[0])
    for other in files[1:]:
        if not ScoreMetadata.read(other).same_model(metadata):
            raise CurateError(
                f"{other} was scored by another model than {files[0]} (other weights, t, b or D); keep one "
                "model per folder"
            )
        if (pixels := ScoreMetadata.read(other).encoded_at) != metadata.encoded_at:
            raise CurateError(
                f"{other} was scored at {pixels} px but {files[0]} at {metadata.encoded_at} px "
                "(curate score --resolution); keep one resolution per folder"
            )
    return ScoreFolder(str(folder), files, metadata)


def check_same_model(
    folder: str | Path,
    model: str,
    pretrained: str | None,
    metadata: dict[str, str] | None = None,
    resolution: int | None = None,
) -> None:
    """Refuse to add a model's score files to a folder that holds another model's, or the same model's at
    another resolution: one folder, one model at one size (what `open_score_folder` checks when reading).
    By name, tag and `resolution` (None: the model's own size) before the model is loaded (so a rerun with
    another --model or --resolution is refused even when nothing is left to score), and by the loaded
    model's full identity (t, b, D and the pixels encoded too) once its `metadata` is known."""
    if not any(local_path(folder, "score folder").glob("*.parquet")):
        return
    existing = open_score_folder(folder, "score folder").metadata
    asked = (model, pretrained or "")
    if (existing.model, existing.pretrained) != asked:
        raise CurateError(
            f"{folder} holds scores by --model {existing.model} --pretrained '{existing.pretrained}'; "
            "score into another folder or pass --overwrite"
        )
    loaded = ScoreMetadata.from_strings(metadata, model) if metadata is not None else None
    if loaded is not None and not loaded.same_model(existing):
        raise CurateError(
            f"{folder} holds scores by --model {existing.model} with other weights (or t, b, D) than it has "
            "now: was the checkpoint replaced? Score into another folder or pass --overwrite"
        )
    # Before loading, the model's own size is the folder's image size: it is the same model (checked above).
    pixels = loaded.encoded_at if loaded is not None else resolution or existing.image_size
    if pixels != existing.encoded_at:
        raise CurateError(
            f"{folder} holds scores encoded at {existing.encoded_at} px, this run encodes at {pixels} px "
            "(--resolution); score into another folder or pass --overwrite"
        )
