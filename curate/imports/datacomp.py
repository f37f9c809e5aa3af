"""DataComp's pool layout (as its download_upstream.py writes it with --download_npz).

    POOL/{hash}.parquet   uid (32 hex digits), url, text, original_width, original_height,
                          clip_b32_similarity_score, clip_l14_similarity_score, face_bboxes, sha256, ...
    POOL/{hash}.npz       l14_img, l14_txt ([N, 768]) and b32_img, b32_txt ([N, 512]): OpenAI CLIP's
                          embeddings of row i of the Parquet

(xlarge nests them one folder deeper: every `*.parquet` under POOL is found.)
`clip_{l14,b32}_similarity_score` is the cosine of the same row's two embeddings, DataComp's "CLIP score",
which its baselines rank by.
"""

from __future__ import annotations

import zipfile

import numpy as np

from curate.errors import CurateError, first_line
from curate.fileio import local_path
from curate.imports.config import DATACOMP_EMBEDDINGS
from curate.imports.pool import PoolChunk, PoolFile, checked_chunk, read_metadata, unique_names

CAPTION = "text"


def datacomp_files(pool: str) -> list[PoolFile]:
    """Every metadata Parquet under `pool` with its .npz, sorted by path."""
    folder = local_path(pool, "POOL")
    if not folder.is_dir():
        raise CurateError(
            f"POOL {pool} is not a folder (DataComp's metadata folder: .parquet and .npz files)"
        )
    files = []
    for parquet in sorted(folder.rglob("*.parquet")):
        if parquet.name.startswith("."):
            continue
        npz = parquet.with_suffix(".npz")
        if not npz.is_file():
            raise CurateError(
                f"{parquet} has no {npz.name} beside it: download the embeddings too (DataComp's "
                "download_upstream.py --download_npz)"
            )
        files.append(PoolFile(parquet.stem, str(parquet), str(npz), str(npz)))
    if not files:
        raise CurateError(f"POOL {pool} holds no .parquet files (DataComp's metadata and .npz embeddings)")
    return unique_names(files, pool)


def read_datacomp(file: PoolFile, embeddings: str) -> PoolChunk:
    """The file's metadata rows and its `{embeddings}_img`, `{embeddings}_txt` arrays, checked aligned."""
    image_name, text_name = f"{embeddings}_img", f"{embeddings}_txt"
    table = read_metadata(file.metadata)
    try:
        with np.load(file.image) as arrays:
            missing = [n for n in (image_name, text_name) if n not in arrays.files]
            if missing:
                raise CurateError(
                    f"{file.image} has no {', '.join(missing)} array (it holds {', '.join(arrays.files)})"
                )
            image, text = arrays[image_name], arrays[text_name]
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise CurateError(f"cannot read {file.image}: {first_line(error)}") from None
    chunk = PoolChunk(file.metadata, table, image, text, CAPTION, f"clip_{embeddings}_similarity_score")
    return checked_chunk(chunk, image_name, text_name, DATACOMP_EMBEDDINGS[embeddings][1])
