"""What `curate download` is asked to do, and what it reports."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from curate.errors import CurateError
from curate.validate import check

# Columns img2dataset writes itself; everything else in a shard's parquet came from the input table.
IMG2DATASET_COLUMNS = {
    "key", "caption", "url", "status", "error_message", "width", "height",
    "original_width", "original_height", "exif", "md5", "sha256", "sha512",
}  # fmt: skip
RESIZE_MODES = ("border", "keep_ratio", "keep_ratio_largest", "center_crop", "no")
ENCODE_FORMATS = ("jpg", "png", "webp")


@dataclass(frozen=True)
class DownloadConfig:
    url_col: str = "url"
    caption_col: str = "caption"
    image_size: int = 256
    resize_mode: str = "border"  # one of RESIZE_MODES
    encode_format: str = "jpg"  # one of ENCODE_FORMATS
    processes: int = 1
    threads: int = 32
    samples_per_shard: int = 10_000
    extra_columns: tuple[str, ...] = ()
    timeout: int = 10
    retries: int = 0
    # Fetch urls of any scheme urllib opens (file://, ftp://, data:), not only http and https: a url list
    # from elsewhere could otherwise copy this machine's files into the shards.
    allow_local_urls: bool = False

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise CurateError(f"--resize-mode must be {', '.join(RESIZE_MODES[:-1])} or {RESIZE_MODES[-1]}")
        if self.encode_format not in ENCODE_FORMATS:
            raise CurateError(f"--encode-format must be jpg, png or webp, got {self.encode_format!r}")
        for option, value in (
            ("--image-size", self.image_size),
            ("--processes", self.processes),
            ("--threads", self.threads),
            ("--samples-per-shard", self.samples_per_shard),
            ("--timeout", self.timeout),
        ):
            check(value >= 1, option, "at least 1", value)
        check(self.retries >= 0, "--retries", "0 or more", self.retries)
        reserved = set(self.extra_columns) & IMG2DATASET_COLUMNS
        if reserved:
            raise CurateError(
                f"--extra-columns cannot keep {sorted(reserved)}: img2dataset writes those itself"
            )


@dataclass
class DownloadSummary:
    folder: str
    shards: int
    count: int
    successes: int
    failures: Counter = field(default_factory=Counter)  # reason -> rows
    skipped: Counter = field(default_factory=Counter)  # reason -> rows never fetched (unsupported_scheme)
    retried: int = 0  # rows tried again by --retry-failed
    recovered: int = 0  # of those, rows that now succeeded
