"""Stream samples out of img2dataset-layout tars without extracting them.

A bad tar, a member with no caption or an image that does not decode is skipped and counted by reason
in `ReadStats`; the iteration goes on. Nothing here raises on bad data.
"""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO

from curate.errors import first_line
from curate.fileio import basename, filesystem
from curate.shards.images import image_decodes
from curate.shards.paths import expand_shards, expected_samples
from curate.shards.schema import (
    CAPTION_EXTENSION,
    METADATA_EXTENSION,
    STATS_SUFFIX,
    image_extension,
    is_safe_key,
    split_member_name,
)


@dataclass(frozen=True)
class Sample:
    key: str
    image: bytes
    image_ext: str
    caption: str
    meta: dict
    shard: str  # file name of the source tar, e.g. "00003.tar"


@dataclass
class ReadStats:
    samples: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> samples
    bad_shards: list[tuple[str, str]] = field(default_factory=list)  # (shard, why)

    def summary(self) -> str:
        parts = [f"{self.samples} samples read"]
        if self.skipped:
            reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(self.skipped.items()))
            parts.append(f"{sum(self.skipped.values())} skipped ({reasons})")
        if self.bad_shards:
            parts.append(f"{len(self.bad_shards)} damaged shard(s)")
        return "; ".join(parts)


SkipCallback = Callable[[str, str], None]  # (key, reason) of a sample that could not be read


def iter_members(
    path: str, stats: ReadStats, on_skip: SkipCallback | None = None
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield (key, {extension: bytes}) for each run of consecutive members that share a key.

    The tar is read as a stream (`r|`, decompressed first when its name says .gz, .bz2, .xz, ...), so it is
    never seeked nor extracted and remote files work. A truncated or corrupt tar ends the shard: what was
    read before the damage is kept, the damage is recorded once in `stats.bad_shards` and the half-read
    sample is counted as `truncated_tar`.
    """
    shard = basename(path)
    fs, fs_path = filesystem(path)
    key, members = None, {}
    try:
        with fs.open(fs_path, "rb", compression="infer") as raw:
            counted = _CountingReader(raw)
            last = None
            with tarfile.open(fileobj=counted, mode="r|") as tar:
                for info in tar:
                    last = info
                    if not info.isfile():
                        continue  # directories, links and devices carry no sample data
                    member_key, extension = split_member_name(info.name)
                    if member_key != key and members:
                        yield key, members
                        members = {}
                    key = member_key
                    handle = tar.extractfile(info)
                    members[extension] = handle.read() if handle is not None else b""
            _check_end_of_archive(counted, last)
    except (tarfile.TarError, EOFError, OSError, ValueError) as error:
        stats.bad_shards.append((shard, first_line(error)))
        if members:
            stats.skipped["truncated_tar"] += 1
            if on_skip:
                on_skip(key, "truncated_tar")
        return
    if members:
        yield key, members


class _CountingReader:
    """A read-only file that counts the bytes read through it: how long the tar stream really was."""

    def __init__(self, raw: IO[bytes]):
        self.raw = raw
        self.bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.bytes += len(data)
        return data


def _check_end_of_archive(counted: _CountingReader, last: tarfile.TarInfo | None) -> None:
    """Raise when the stream ends right after the last member instead of holding an end-of-archive block.

    tarfile stops quietly at a missing or partial header, so a tar cut at a member boundary reads like a
    short whole one; only the zero block after the last member's (512-padded) data tells them apart.
    """
    end = 0 if last is None else last.offset_data + -(-last.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    needed = end + tarfile.BLOCKSIZE
    # tarfile reads whole 10 KiB records, so the block is usually in already; read no further than it.
    while counted.bytes < needed and counted.read(needed - counted.bytes):
        pass
    if counted.bytes < needed:
        raise tarfile.ReadError("no end-of-archive marker (truncated)")


def iter_samples(
    sources: str | Sequence[str], stats: ReadStats | None = None, check_images: bool = True
) -> Iterator[Sample]:
    """Every well-formed sample of every shard named by `sources` (see `expand_shards`), in shard order.

    With `check_images`, images are decoded (cheaply: JPEGs at 1/8 scale) and those that fail are skipped
    as `undecodable_image`; callers that decode anyway, like `score`, turn it off and record failures
    themselves.
    """
    stats = stats if stats is not None else ReadStats()
    for path in expand_shards(sources):
        yield from iter_shard(path, stats, check_images)


def iter_shard(
    path: str, stats: ReadStats, check_images: bool = True, on_skip: SkipCallback | None = None
) -> Iterator[Sample]:
    """The samples of one shard; `on_skip(key, reason)` hears of each one skipped, for callers that keep
    a row per sample (like `score`).

    A shard whose `_stats.json` counts more samples than its tar held is damaged even when the tar itself
    looks whole (a tar rewritten short, a stats file of another download): the difference is counted as
    `truncated_tar` (replacing the one half-read sample `iter_members` counts) and the shard recorded in
    `stats.bad_shards`.
    """
    shard = basename(path)
    damaged_before, truncated_before = len(stats.bad_shards), stats.skipped["truncated_tar"]
    read = 0
    for key, members in iter_members(path, stats, on_skip):
        read += 1
        sample, reason = _to_sample(key, members, shard, check_images)
        if sample is None:
            stats.skipped[reason] += 1
            if on_skip:
                on_skip(key, reason)
            continue
        stats.samples += 1
        yield sample
    expected = expected_samples(path)
    if expected is None or read >= expected:
        return
    stats.skipped["truncated_tar"] = truncated_before + expected - read
    if len(stats.bad_shards) == damaged_before:
        stats.bad_shards.append((shard, f"holds {read} of the {expected} samples its {STATS_SUFFIX} counts"))


def _to_sample(key: str, members: dict[str, bytes], shard: str, check_images: bool):
    if any("." in extension for extension in members):
        return None, "dotted_key"  # "a.b.jpg": webdataset would read key "a", so the pair is ambiguous
    if not is_safe_key(key):
        return None, "unsafe_key"  # "dir/x.jpg", "../x.jpg": export would write outside its folder
    image_ext = image_extension(members)
    if image_ext is None:
        return None, "missing_image"
    if CAPTION_EXTENSION not in members:
        return None, "missing_caption"
    caption = members[CAPTION_EXTENSION].decode("utf-8", errors="replace").strip()
    if not caption:
        return None, "empty_caption"
    meta: dict = {}
    if METADATA_EXTENSION in members:
        try:
            meta = json.loads(members[METADATA_EXTENSION])
        except ValueError:
            return None, "invalid_json"
        if not isinstance(meta, dict):
            return None, "invalid_json"
    image = members[image_ext]
    if check_images and not image_decodes(image):
        return None, "undecodable_image"
    return Sample(key, image, image_ext, caption, meta, shard), None
