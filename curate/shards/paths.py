"""Turn what a user typed (a folder, tar paths, a brace pattern, fsspec URLs) into a list of shard paths,
and find the other files of a shard folder (its tables, its stats)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import braceexpand

from curate.errors import CurateError
from curate.fileio import basename, filesystem
from curate.shards.schema import STATS_SUFFIX


def expand_shards(sources: str | Sequence[str], extension: str = "tar") -> list[str]:
    """Every shard named by `sources`, in a stable order.

    Each source is a folder (its `*.tar`, sorted), a brace pattern (`data/{00000..00099}.tar`), a glob or one
    file; local paths and fsspec URLs alike. A source that names nothing is an error, so a typo never
    silently curates an empty dataset.
    """
    if isinstance(sources, str):
        sources = [sources]
    paths: list[str] = []
    for source in sources:
        for pattern in braceexpand.braceexpand(str(source)):
            paths.extend(_expand_one(pattern, extension))
    if not paths:
        raise CurateError(f"no .{extension} shards found in {', '.join(map(str, sources))}")
    return paths


def folder_files(folder: str, suffix: str) -> list[str]:
    """The files directly in `folder` whose names end in `suffix` (`.parquet`, `_stats.json`), sorted.

    A URL's files come back as URLs. Temporary files (`.name.XXXX.tmp`, see `atomic_open`) never match.
    """
    fs, path = filesystem(folder)
    unstrip = _unstripper(fs)
    return [unstrip(p) for p in sorted(fs.glob(f"{path.rstrip('/')}/*{suffix}"))]


def shard_sibling(tar: str, suffix: str) -> str:
    """`.../00003.parquet` for `.../00003.tar` and `.parquet`: the other files of a shard's trio."""
    return tar.removesuffix(".tar") + suffix


def _unstripper(fs) -> Callable[[str], str]:
    """fsspec globs return paths without their protocol: put it back, except for local files."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return (lambda p: p) if protocol in ("file", "local") else fs.unstrip_protocol


def _expand_one(pattern: str, extension: str) -> list[str]:
    fs, path = filesystem(pattern)
    unstrip = _unstripper(fs)
    if any(ch in path for ch in "*?["):
        found = sorted(fs.glob(path))
        if not found:
            raise CurateError(f"no files match {pattern}")
        return [unstrip(p) for p in found]
    if fs.isdir(path):
        return [unstrip(p) for p in sorted(fs.glob(f"{path.rstrip('/')}/*.{extension}"))]
    if fs.isfile(path):
        return [unstrip(path)]
    raise CurateError(f"no such file or folder: {pattern}")


def expected_samples(path: str) -> int | None:
    """How many samples the shard's `_stats.json` says its tar holds (`successes`), or None without one."""
    fs, stats_path = filesystem(shard_sibling(path, STATS_SUFFIX))
    try:
        with fs.open(stats_path, "r") as handle:
            return int(json.load(handle)["successes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def count_samples(paths: Sequence[str]) -> int | None:
    """Samples in these shards according to their `_stats.json` (img2dataset and curate write one per
    shard), or None when any is missing: a progress bar's total, never a correctness input."""
    counts = [expected_samples(path) for path in paths]
    return None if None in counts else sum(counts)


def shards_by_name(paths: Sequence[str], needed: Sequence[str], where: str) -> dict[str, str]:
    """Shard file name -> path among `paths` for every name in `needed` (a manifest's `shard` column);
    a name missing from them is a one-line error naming `where` the shards were looked for."""
    by_name = {basename(path): path for path in paths}
    absent = sorted(set(needed) - set(by_name))
    if absent:
        examples = ", ".join(absent[:3]) + (", ..." if len(absent) > 3 else "")
        raise CurateError(f"{len(absent)} shard(s) named by the manifest are not in {where}: {examples}")
    return {name: by_name[name] for name in sorted(set(needed))}
