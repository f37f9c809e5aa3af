"""clip-retrieval's embedding layout (its `clip-retrieval inference` output; LAION's released embeddings).

    FOLDER/img_emb/img_emb_{N}.npy           [rows, D] image embeddings (float16, L2-normalised)
    FOLDER/text_emb/text_emb_{N}.npy         [rows, D] text embeddings of the same rows
    FOLDER/metadata/metadata_{N}.parquet     image_path, caption, then the samples' img2dataset metadata
                                             (key, url, width, height, ...), row i of both arrays

N is the same zero-padded partition number in all three. The .npy files are memory-mapped: a file's
embeddings are read once, as they are normalised.
"""

from __future__ import annotations

import re

import numpy as np

from curate.errors import CurateError, first_line
from curate.fileio import local_path
from curate.imports.pool import PoolChunk, PoolFile, checked_chunk, read_metadata, unique_names

CAPTION = "caption"
METADATA = re.compile(r"metadata_(.+)\.parquet")


def clip_retrieval_files(folder: str) -> list[PoolFile]:
    """Every `metadata/metadata_N.parquet` with its `img_emb_N.npy` and `text_emb_N.npy`, sorted by N."""
    root = local_path(folder, "FOLDER")
    if not (root / "metadata").is_dir():
        raise CurateError(
            f"FOLDER {folder} has no metadata/ folder (clip-retrieval's layout: img_emb/, text_emb/, "
            "metadata/)"
        )
    files = []
    for parquet in sorted((root / "metadata").glob("metadata_*.parquet")):
        number = METADATA.fullmatch(parquet.name).group(1)
        image = root / "img_emb" / f"img_emb_{number}.npy"
        text = root / "text_emb" / f"text_emb_{number}.npy"
        for needed in (image, text):
            if not needed.is_file():
                raise CurateError(f"{parquet} has no {needed.relative_to(root)} beside it")
        files.append(PoolFile(parquet.stem, str(parquet), str(image), str(text)))
    if not files:
        raise CurateError(f"FOLDER {folder} holds no metadata/metadata_N.parquet files")
    return unique_names(files, folder)


def read_clip_retrieval(file: PoolFile, dim: int | None) -> PoolChunk:
    """The file's metadata rows and both embedding arrays (memory-mapped), checked aligned; D must be
    `dim` when given (the folder's, once its first file is imported)."""
    table = read_metadata(file.metadata)
    arrays = []
    for path in (file.image, file.text):
        try:
            arrays.append(np.load(path, mmap_mode="r"))
        except (OSError, ValueError) as error:
            raise CurateError(f"cannot read {path}: {first_line(error)}") from None
    chunk = PoolChunk(file.metadata, table, arrays[0], arrays[1], CAPTION)
    return checked_chunk(chunk, file.image, file.text, dim)
