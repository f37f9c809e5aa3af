"""Atomic writes for local paths and fsspec URLs: a killed writer never leaves a half file."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from typing import IO

import fsspec
from fsspec.implementations.local import LocalFileSystem


def filesystem(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of `path` and the path as that filesystem spells it."""
    return fsspec.core.url_to_fs(str(path))


def join(folder: str, name: str) -> str:
    return f"{str(folder).rstrip('/')}/{name}"


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator[IO]:
    """Open `path` for writing under a temporary name in the same folder; rename on success.

    The temporary name starts with a dot and ends in `.tmp` so that globs for `*.tar` or `*.parquet`
    never see it. On error the temporary file is removed and the destination is left as it was.
    """
    fs, fs_path = filesystem(path)
    folder, name = fs_path.rsplit("/", 1) if "/" in fs_path else (".", fs_path)
    tmp = f"{folder}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with fs.open(tmp, mode) as handle:
            yield handle
        if isinstance(fs, LocalFileSystem):
            os.replace(tmp, fs_path)  # atomic on POSIX, unlike fs.mv which may copy
        else:
            fs.mv(tmp, fs_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError, OSError):
            fs.rm(tmp)
        raise


def write_bytes_atomic(path: str, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)
