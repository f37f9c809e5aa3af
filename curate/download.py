"""`curate download`: run img2dataset on a table of (url, caption) into shards, and retry its failures.

img2dataset runs in a child process whose output goes to `OUT/download.log`: its own status tables would
otherwise fight our progress bar, and a crash there must not take this process down with it.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
import shutil
import tarfile
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from curate.errors import CurateError
from curate.fileio import atomic_open
from curate.shards.reader import ReadStats, iter_members
from curate.shards.schema import SUCCESS
from curate.shards.writer import add_tar_member, write_sizes

# Columns img2dataset writes itself; everything else in a shard's parquet came from the input table.
IMG2DATASET_COLUMNS = {
    "key", "caption", "url", "status", "error_message", "width", "height",
    "original_width", "original_height", "exif", "md5", "sha256", "sha512",
}  # fmt: skip
RETRY_KEY, RETRY_SHARD = "curate_retry_key", "curate_retry_shard"
INPUT_FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


@dataclass(frozen=True)
class DownloadConfig:
    url_col: str = "url"
    caption_col: str = "caption"
    image_size: int = 256
    resize_mode: str = "border"  # border | keep_ratio | keep_ratio_largest | center_crop | no
    encode_format: str = "jpg"  # jpg | png | webp
    processes: int = 1
    threads: int = 32
    samples_per_shard: int = 10_000
    extra_columns: tuple[str, ...] = ()
    timeout: int = 10
    retries: int = 0

    def __post_init__(self) -> None:
        if self.resize_mode not in ("border", "keep_ratio", "keep_ratio_largest", "center_crop", "no"):
            raise CurateError(
                "--resize-mode must be border, keep_ratio, keep_ratio_largest, center_crop or no"
            )
        if self.encode_format not in ("jpg", "png", "webp"):
            raise CurateError(f"--encode-format must be jpg, png or webp, got {self.encode_format!r}")
        if min(self.image_size, self.processes, self.threads, self.samples_per_shard, self.timeout) < 1:
            raise CurateError(
                "--image-size, --processes, --threads, --samples-per-shard and --timeout must be >= 1"
            )


@dataclass
class DownloadSummary:
    folder: str
    shards: int
    count: int
    successes: int
    failures: Counter = field(default_factory=Counter)  # reason -> rows
    retried: int = 0  # rows tried again by --retry-failed
    recovered: int = 0  # of those, rows that now succeeded


def download(
    urls: str, out: str, config: DownloadConfig, progress: Callable[[int, int], None] | None = None
) -> DownloadSummary:
    """Download every row of `urls` (parquet, csv, tsv or jsonl) into img2dataset shards in `out`.

    Re-running resumes: img2dataset skips shards whose `_stats.json` exists.
    """
    table = read_url_table(urls, config)
    Path(out).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="curate-download-") as scratch:
        normalised = os.path.join(scratch, "urls.parquet")
        pq.write_table(table, normalised)
        _run_img2dataset(normalised, out, config, list(config.extra_columns), table.num_rows, progress)
    write_sizes(out)
    return summarise(out)


def retry_failed(
    out: str, config: DownloadConfig, progress: Callable[[int, int], None] | None = None
) -> DownloadSummary:
    """Download again the rows of `out` whose status is a failure, and merge the successes into their shards.

    Idempotent: a retry killed half-way and run again neither loses nor duplicates a sample.
    """
    shard_tables = sorted(Path(out).glob("*.parquet"))
    if not shard_tables:
        raise CurateError(f"no img2dataset shards (*.parquet) in {out} to retry")
    failed = []
    for path in shard_tables:
        table = pq.read_table(path)
        rows = table.filter(pa.compute.not_equal(table["status"], SUCCESS))
        if rows.num_rows:
            extra = [c for c in table.column_names if c not in IMG2DATASET_COLUMNS]
            failed.append(
                rows.select(["url", "caption", *extra])
                .append_column(RETRY_KEY, rows["key"])
                .append_column(RETRY_SHARD, pa.array([path.stem] * rows.num_rows))
            )
    if not failed:
        return summarise(out)
    retry_input = pa.concat_tables(failed, promote_options="default")
    extra = [c for c in retry_input.column_names if c not in ("url", "caption")]
    scratch = Path(out) / "_retry"
    shutil.rmtree(scratch, ignore_errors=True)  # a killed earlier retry: start that part over
    scratch.mkdir()
    try:
        normalised = str(scratch / "urls.parquet")
        pq.write_table(retry_input, normalised)
        _run_img2dataset(normalised, str(scratch / "shards"), config, extra, retry_input.num_rows, progress)
        recovered = _merge_retried(scratch / "shards", Path(out))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_sizes(out)
    summary = summarise(out)
    summary.retried, summary.recovered = retry_input.num_rows, recovered
    return summary


def read_url_table(path: str, config: DownloadConfig) -> pa.Table:
    """The user's url table with its columns renamed to img2dataset's `url` and `caption`."""
    source = Path(path)
    if not source.is_file():
        raise CurateError(f"no such file: {path}")
    suffix = "".join(source.suffixes[-1:]).lower()
    if suffix not in INPUT_FORMATS:
        raise CurateError(f"{path}: expected a .parquet, .csv, .tsv or .jsonl file")
    try:
        if suffix == ".parquet":
            table = pq.read_table(source)
        elif suffix in (".csv", ".tsv"):
            delimiter = "\t" if suffix == ".tsv" else ","
            table = pa_csv.read_csv(source, parse_options=pa_csv.ParseOptions(delimiter=delimiter))
        else:
            table = pa_json.read_json(source)
    except (pa.ArrowInvalid, OSError) as error:
        raise CurateError(f"cannot read {path}: {str(error).splitlines()[0]}") from None
    wanted = {config.url_col: "url", config.caption_col: "caption"}
    for column in [*wanted, *config.extra_columns]:
        if column not in table.column_names:
            raise CurateError(f"{path} has no column {column!r} (it has: {', '.join(table.column_names)})")
    reserved = set(config.extra_columns) & IMG2DATASET_COLUMNS
    if reserved:
        raise CurateError(f"--extra-columns cannot keep {sorted(reserved)}: img2dataset writes those itself")
    table = table.select([*wanted, *config.extra_columns]).rename_columns(
        ["url", "caption", *config.extra_columns]
    )
    return table.set_column(1, "caption", pa.compute.cast(table["caption"], pa.string()))


def summarise(out: str) -> DownloadSummary:
    """Totals over every finished shard's `_stats.json`; failures grouped by a cleaned-up reason."""
    count = successes = 0
    failures: Counter = Counter()
    stats_files = sorted(Path(out).glob("*_stats.json"))
    for path in stats_files:
        stats = json.loads(path.read_text())
        count += stats["count"]
        successes += stats["successes"]
        for reason, n in stats.get("status_dict", {}).items():
            if reason != SUCCESS:
                failures[_reason(reason)] += n
    return DownloadSummary(
        folder=out, shards=len(stats_files), count=count, successes=successes, failures=failures
    )


def _reason(message: str) -> str:
    # img2dataset's messages embed object addresses and URLs; group them by what went wrong.
    message = re.sub(r"<[^>]*>", "<...>", message)
    return re.sub(r"https?://\S+", "<url>", message).strip()


def _run_img2dataset(
    url_list: str, out: str, config: DownloadConfig, extra: list[str], rows: int, progress
) -> None:
    kwargs = dict(
        url_list=url_list,
        output_folder=out,
        input_format="parquet",
        output_format="webdataset",
        url_col="url",
        caption_col="caption",
        save_additional_columns=extra or None,
        image_size=config.image_size,
        resize_mode=config.resize_mode,
        encode_format=config.encode_format,
        processes_count=config.processes,
        thread_count=config.threads,
        number_sample_per_shard=config.samples_per_shard,
        timeout=config.timeout,
        retries=config.retries,
        enable_wandb=False,
        incremental_mode="incremental",
    )
    Path(out).mkdir(parents=True, exist_ok=True)
    log = str(Path(out) / "download.log")
    shards = max(1, math.ceil(rows / config.samples_per_shard))
    child = multiprocessing.get_context("spawn").Process(target=_img2dataset_child, args=(kwargs, log))
    child.start()
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.5):
            if progress:
                progress(len(list(Path(out).glob("*_stats.json"))), shards)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        child.join()
    finally:
        stop.set()
        watcher.join()
        if child.is_alive():
            child.terminate()
    if progress:
        progress(len(list(Path(out).glob("*_stats.json"))), shards)
    if child.exitcode != 0:
        raise CurateError(f"img2dataset failed (exit {child.exitcode}): {_last_line(log)}; full log in {log}")


def _img2dataset_child(kwargs: dict, log: str) -> None:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations phones home at import
    with open(log, "ab") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
    from img2dataset import download as img2dataset_download

    img2dataset_download(**kwargs)


def _last_line(log: str) -> str:
    try:
        lines = [line for line in Path(log).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1].strip() if lines else "no output"


def _merge_retried(retried: Path, out: Path) -> int:
    """Move each retried success into its original shard under its original key; return how many."""
    by_shard: dict[str, list[dict]] = {}
    for path in sorted(retried.glob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            if row["status"] == SUCCESS:
                by_shard.setdefault(row[RETRY_SHARD], []).append(row)
    members: dict[str, dict[str, bytes]] = {}
    for path in sorted(retried.glob("*.tar")):
        for key, group in iter_members(str(path), ReadStats()):
            members[key] = group
    recovered = 0
    for shard, rows in by_shard.items():
        recovered += _merge_shard(out, shard, rows, members)
    return recovered


def _merge_shard(out: Path, shard: str, rows: list[dict], members: dict[str, dict[str, bytes]]) -> int:
    """Rewrite one shard's tar, parquet and stats with its recovered rows, each file atomically."""
    tar_path, table_path, stats_path = (
        out / f"{shard}.tar",
        out / f"{shard}.parquet",
        out / f"{shard}_stats.json",
    )
    recovered = {row[RETRY_KEY]: row for row in rows}  # original key -> its row from the retry run
    with tarfile.open(tar_path) as tar:
        present = {name.split(".", 1)[0] for name in tar.getnames()}
    with atomic_open(str(tar_path), "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
        for key, group in iter_members(str(tar_path), ReadStats()):
            for extension, data in group.items():
                add_tar_member(tar, f"{key}.{extension}", data)
        for original, row in recovered.items():
            if original in present:
                continue  # merged by an earlier retry that was killed before it rewrote the parquet
            for extension, data in members[row["key"]].items():
                if extension == "json":
                    meta = {k: v for k, v in json.loads(data).items() if k not in (RETRY_KEY, RETRY_SHARD)}
                    data = json.dumps({**meta, "key": original}, indent=4).encode()
                add_tar_member(tar, f"{original}.{extension}", data)
    table = pq.read_table(table_path)
    merged = []
    for row in table.to_pylist():
        retried = recovered.get(row["key"])
        if retried is not None:
            row = {**row, **{k: v for k, v in retried.items() if k in row and k != "key"}}
        merged.append(row)
    with atomic_open(str(table_path), "wb") as handle:
        pq.write_table(pa.Table.from_pylist(merged, schema=table.schema), handle)
    stats = json.loads(stats_path.read_text())
    statuses = Counter(
        row["status"] if row["status"] == SUCCESS else row["error_message"] or row["status"] for row in merged
    )
    stats["successes"] = statuses[SUCCESS]
    stats["failed_to_download"] = max(
        0, stats["count"] - stats["successes"] - stats.get("failed_to_resize", 0)
    )
    stats["status_dict"] = dict(statuses)
    with atomic_open(str(stats_path), "w") as handle:
        json.dump(stats, handle, indent=4)
    return len(recovered)
