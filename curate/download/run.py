"""Run img2dataset on a url table, in a child process whose output goes to `OUT/download.log`: its own
status tables would otherwise fight our progress bar, and a crash there must not take this process down.

The output folder is local (`local_path`): img2dataset's log, the progress watcher and `--retry-failed`'s
rewrite of shards all work on files. The url table may be any fsspec URL; img2dataset reads a local copy.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
import tempfile
import threading
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from curate.download.config import DownloadConfig, DownloadSummary
from curate.download.urls import read_url_table
from curate.errors import CurateError, first_line
from curate.fileio import local_path
from curate.runtime import Progress
from curate.shards.paths import folder_files
from curate.shards.schema import STATS_SUFFIX, SUCCESS
from curate.shards.writer import write_sizes


def download(
    urls: str, out: str, config: DownloadConfig, progress: Progress | None = None
) -> DownloadSummary:
    """Download every row of `urls` (parquet, csv, tsv or jsonl) into img2dataset shards in `out`.

    Re-running resumes: img2dataset skips shards whose `_stats.json` exists.
    """
    folder = local_path(out, "OUT")
    table = read_url_table(urls, config)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="curate-download-") as scratch:
        normalised = os.path.join(scratch, "urls.parquet")
        pq.write_table(table, normalised)
        run_img2dataset(normalised, folder, config, list(config.extra_columns), table.num_rows, progress)
    write_sizes(str(folder))
    return summarise(folder)


def summarise(folder: Path) -> DownloadSummary:
    """Totals over every finished shard's `_stats.json`; failures grouped by a cleaned-up reason."""
    count = successes = 0
    failures: Counter = Counter()
    stats_files = folder_files(str(folder), STATS_SUFFIX)
    for path in stats_files:
        try:
            stats = json.loads(Path(path).read_text())
            count += stats["count"]
            successes += stats["successes"]
            reasons = stats.get("status_dict", {}).items()
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise CurateError(f"{path} is not an img2dataset stats file ({first_line(error)})") from None
        for reason, n in reasons:
            if reason != SUCCESS:
                failures[_reason(reason)] += n
    return DownloadSummary(
        folder=str(folder), shards=len(stats_files), count=count, successes=successes, failures=failures
    )


def _reason(message: str) -> str:
    # img2dataset's messages embed object addresses and URLs; group them by what went wrong.
    message = re.sub(r"<[^>]*>", "<...>", message)
    return re.sub(r"https?://\S+", "<url>", message).strip()


def run_img2dataset(
    url_list: str, out: Path, config: DownloadConfig, extra: list[str], rows: int, progress: Progress | None
) -> None:
    """img2dataset from the normalised parquet `url_list` into `out`; a failure is one line naming the log."""
    kwargs = dict(
        url_list=url_list,
        output_folder=str(out),
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
    out.mkdir(parents=True, exist_ok=True)
    log = str(out / "download.log")
    shards = max(1, math.ceil(rows / config.samples_per_shard))
    child = multiprocessing.get_context("spawn").Process(target=_img2dataset_child, args=(kwargs, log))
    child.start()
    stop = threading.Event()

    def finished() -> int:
        return len(folder_files(str(out), STATS_SUFFIX))

    def watch() -> None:
        while not stop.wait(0.5):
            if progress:
                progress(finished(), shards)

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
        progress(finished(), shards)
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
