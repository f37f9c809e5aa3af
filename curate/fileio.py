"""The one path layer: fsspec URLs and local paths, atomic writes, one-line refusals where a stage is local.

Every path a user gives goes through here. `Path("s3://b/x")` silently means the local folder `s3:/b/x`, so
no module turns a user's path into a `pathlib.Path` without `local_path` first: a URL is either handled by
fsspec or refused in one line, never written somewhere else.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import math
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from curate.errors import CurateError, first_line


def filesystem(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of `path` and the path as that filesystem spells it."""
    return fsspec.core.url_to_fs(str(path))


def join(folder: str, name: str) -> str:
    return f"{str(folder).rstrip('/')}/{name}"


def basename(path: str) -> str:
    """The last component of a local path or URL: `00003.tar` of `s3://b/shards/00003.tar`."""
    return str(path).rstrip("/").rsplit("/", 1)[-1]


LOCAL_PROTOCOLS = (None, "file", "local")


def is_local(path: str | os.PathLike) -> bool:
    """True for a plain path or a file:// URL, False for any other fsspec URL (s3://, memory://, ...).
    Read off the URL alone: no filesystem is created, so a URL whose driver is not installed is still
    recognised as remote."""
    return fsspec.core.split_protocol(str(path))[0] in LOCAL_PROTOCOLS


def local_path(path: str | os.PathLike, option: str) -> Path:
    """`path` as a local Path (file:// URLs unwrapped), or a one-line error naming `option` for a URL of
    another filesystem, which the stage behind `option` cannot read or write."""
    if not is_local(path):
        raise CurateError(
            f"{option} {path}: only local paths (or file:// URLs) are supported here; copy the data to a "
            "local folder first"
        )
    return Path(fsspec.core.split_protocol(str(path))[1])


def output_path(value: str | os.PathLike, option: str = "--output") -> Path:
    """The one rule for where a command writes: a local path, or a file:// URL meaning that same path.

    Any other URL (memory://, s3://, gs://, http://, ...) is refused in one line naming `option`, before
    any work: a command that took it would write a local folder named `memory:` or fail at its first
    write, after all its work. Every command that writes an output calls this first (`curate import` too).
    """
    protocol, path = fsspec.core.split_protocol(str(value))
    if protocol not in LOCAL_PROTOCOLS:
        raise CurateError(
            f"{option} {value}: only local paths (or file:// URLs) are supported as an output; write "
            f"locally, then copy to {protocol}://"
        )
    return Path(path)


def absolute(path: str | os.PathLike) -> str:
    """What an artefact records as its input: a local path made absolute, a URL unchanged."""
    return str(path) if not is_local(path) else str(local_path(path, "").absolute())


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator[IO]:
    """Open `path` for writing under a temporary name in the same folder; rename on success.

    The temporary name starts with a dot and ends in `.tmp` so that globs for `*.tar` or `*.parquet`
    never see it, and names its writer (`.{name}.{host}-{pid}-{random}.tmp`) so that a later run can tell
    a killed writer's leftover from a live one's (`remove_stale_temporaries`). On error the temporary file
    is removed and the destination is left as it was.
    """
    fs, fs_path = filesystem(path)
    folder, name = fs_path.rsplit("/", 1) if "/" in fs_path else (".", fs_path)
    tmp = f"{folder}/{temporary_name(name)}"
    try:
        with fs.open(tmp, mode) as handle:
            yield handle
        if isinstance(fs, LocalFileSystem):
            os.replace(tmp, fs_path)  # atomic on POSIX, unlike fs.mv which may copy
        else:
            fs.mv(tmp, fs_path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError, OSError):
            fs.rm(tmp)
        if isinstance(error, OSError):
            raise naming_the_file(error, path) from None
        raise


_OUT_OF_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def naming_the_file(error: OSError, path: str | os.PathLike) -> OSError:
    """`error`, or when it is a write that failed for space without saying which file it was writing (as
    Python's and pyarrow's writes fail), the same error naming `path`: the one-line error would otherwise
    be a bare "No space left on device"."""
    if error.errno in _OUT_OF_SPACE and error.filename is None:
        return OSError(error.errno, f"{os.strerror(error.errno)} (is the disk full?)", str(path))
    return error


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Around writes to `path` that do not go through `atomic_open` (spill files, an appended log): a full
    disk names the file."""
    try:
        yield
    except OSError as error:
        raised = naming_the_file(error, path)
        if raised is error:
            raise
        raise raised from None


def write_json(path: str, value: dict) -> None:
    """`value` as strict, indented JSON, atomically. json.dump would write a NaN or an infinity as a bare
    `NaN`, which no JSON reader but Python's accepts, so those become null."""
    with atomic_open(path, "w") as handle:
        json.dump(_finite(value), handle, indent=2, allow_nan=False)
        handle.write("\n")


def read_json_object(path: str, what: str, hint: str = "") -> dict:
    """The JSON object in `path` (a local path or fsspec URL), read as UTF-8 whatever the locale; a file that
    is missing, not UTF-8, not JSON or not an object is one line naming it and `what` it should be, then
    `hint` (what to do)."""
    fs, inner = filesystem(path)
    try:
        with fs.open(inner, "rb") as handle:
            value = json.loads(handle.read().decode("utf-8"))  # UnicodeDecodeError is a ValueError
    except (OSError, ValueError) as error:
        raise CurateError(f"cannot read {path} as {what} ({first_line(error)}){hint}") from None
    if not isinstance(value, dict):
        raise CurateError(f"{path} is not {what} (JSON, but not an object){hint}")
    return value


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def temporary_name(name: str) -> str:
    """`.{name}.{host}-{pid}-{random}.tmp`: hidden from globs, and naming this process as its writer, the
    format `remove_stale_temporaries` recognises."""
    return f".{name}.{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"


@functools.cache
def _host() -> str:
    """This machine, in 6 hex digits: a pid means something only on the machine (and in the container, which
    has a hostname of its own) that wrote it, and a shared folder may be written from several."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


_TEMPORARY = re.compile(r"\..+\.(?P<host>[0-9a-f]{6})-(?P<pid>[0-9]+)-[0-9a-f]{8}\.tmp")
_OLD_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")  # before writers were named: `.{name}.{random}.tmp`


def remove_stale_temporaries(*folders: str | os.PathLike) -> int:
    """Remove from local `folders` the temporaries of `atomic_open` writers that are gone (a run killed
    mid-write leaves one, hidden by its leading dot, that nothing else would ever remove); how many.

    A temporary is stale when its writer's process, on this machine, no longer exists, or when it has the
    old unnamed format. One of a live process, or of another machine (whose pids cannot be checked from
    here), is kept. Call it when a command starts writing a folder; a folder that does not exist, or a
    URL, is left alone.
    """
    removed = 0
    for folder in folders:
        if not is_local(folder):
            continue
        try:
            entries = list(os.scandir(local_path(folder, "")))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            named = _TEMPORARY.fullmatch(entry.name)
            if named:
                if named["host"] != _host() or _alive(int(named["pid"])):
                    continue
            elif not _OLD_TEMPORARY.fullmatch(entry.name):
                continue
            if entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):  # another run removed it first
                    os.remove(entry.path)
                    removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process; a number no pid can be: keep it
        pass
    return True


LOCK_FILE = ".curate.lock"


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, option: str = "--output") -> Iterator[None]:
    """Hold `folder/.curate.lock` while a command writes `folder` (made if missing): a second command
    writing the same folder at the same time is refused in one line naming the holder, rather than both
    succeeding into a mixture of their outputs.

    The lock is an flock on the file, which the kernel drops when its process ends however it ends, so a
    killed run's lock is taken over by the next run with no pid to check. The file holds its holder's pid and
    host for the message, and is removed on release (taken from a file still in place, so that a process
    that opened a file being removed retries on the new one). A URL folder (export's remote outputs) has no
    lock: object stores offer none.
    """
    if not is_local(folder):
        yield
        return
    path = local_path(folder, option) / LOCK_FILE
    made = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(handle, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(handle)
            raise CurateError(
                f"{option} {folder}: another curate command is writing this folder ({holder}); wait for it "
                "or write elsewhere"
            ) from None
        try:
            if os.stat(path).st_ino == os.fstat(handle).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(handle)  # locked a file its holder has just removed: lock the one now in place
    try:
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)  # while still holding it: see above
        os.close(handle)
        if made:  # a command that failed before writing leaves no empty folder behind
            with contextlib.suppress(OSError):
                path.parent.rmdir()


_SPILL = re.compile(r"curate-spill-[a-z]+-(?P<host>[0-9a-f]{6})-(?P<pid>[0-9]+)-.+")


@contextlib.contextmanager
def spill_folder(stage: str) -> Iterator[str]:
    """A folder under $TMPDIR for `stage`'s spill files, removed when the stage ends.

    Its name (`curate-spill-{stage}-{host}-{pid}-{random}`) names this process, because a killed run
    (kill -9, out of memory) never reaches the removal and a spill can be as large as the data: each new
    spill first removes those of dead processes on this machine (`remove_stale_spill_folders`).
    """
    remove_stale_spill_folders()
    with tempfile.TemporaryDirectory(prefix=f"curate-spill-{stage}-{_host()}-{os.getpid()}-") as folder:
        yield folder


def remove_stale_spill_folders() -> int:
    """Remove from $TMPDIR the spill folders of `spill_folder` users that are gone; how many. One of a live
    process, or of another machine sharing $TMPDIR (its pids mean nothing here), is kept."""
    removed = 0
    root = tempfile.gettempdir()
    for entry in os.scandir(root):
        named = _SPILL.fullmatch(entry.name)
        if not named or named["host"] != _host() or _alive(int(named["pid"])):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)  # another run may be removing it too
            removed += 1
    return removed


def write_bytes_atomic(path: str, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def read_table_with_schema(path: Path, schema: pa.Schema, what: str) -> pa.Table:
    """A Parquet file read whole, refused in one line unless it holds exactly `schema`'s columns (`what`
    the file should be, for the message)."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as error:
        raise CurateError(f"cannot read {path}: {first_line(error)}") from None
    if not table.schema.remove_metadata().equals(schema):
        raise CurateError(f"{path} is not {what} (columns {table.schema.names})")
    return table
