"""Run img2dataset on a url table, in a child process whose output goes to `OUT/download.log`: its own
status tables would otherwise fight our progress bar, and a crash there must not take this process down.

The output folder is local (`output_path`): img2dataset's log, the progress watcher and `--retry-failed`'s
rewrite of shards all work on files. The url table may be any fsspec URL; img2dataset reads a local copy.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import re
import signal
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from multiprocessing import resource_tracker
from pathlib import Path

import pyarrow.parquet as pq

from curate.download.config import DownloadConfig, DownloadSummary
from curate.download.urls import UNSUPPORTED_SCHEME, fetchable_rows, read_url_table
from curate.errors import CurateError, first_line
from curate.fileio import output_lock, output_path, remove_stale_temporaries
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
    folder = output_path(out, "OUT")
    with output_lock(folder, "OUT"):
        return _download_into(folder, urls, config, progress)


def _download_into(
    folder: Path, urls: str, config: DownloadConfig, progress: Progress | None
) -> DownloadSummary:
    remove_stale_temporaries(folder)  # a killed run's half-written sizes.json
    table, skipped = fetchable_rows(read_url_table(urls, config), config)
    if skipped and not table.num_rows:
        raise CurateError(
            f"{urls}: no http or https urls to download ({skipped[UNSUPPORTED_SCHEME]} rows with another "
            "scheme; --allow-local-urls fetches file:// and other urls too)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="curate-download-") as scratch:
        normalised = os.path.join(scratch, "urls.parquet")
        pq.write_table(table, normalised)
        run_img2dataset(normalised, folder, config, list(config.extra_columns), table.num_rows, progress)
    write_sizes(str(folder))
    summary = summarise(folder)
    summary.skipped = skipped
    return summary


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
    # img2dataset imports wandb, which makes two temporary folders at import and removes them at exit;
    # img2dataset's worker processes end without that exit, so the child's temp folder is ours to remove.
    private_tmp = tempfile.TemporaryDirectory(prefix="curate-img2dataset-", ignore_cleanup_errors=True)
    child = multiprocessing.get_context("spawn").Process(
        target=_img2dataset_child, args=(kwargs, log, private_tmp.name)
    )
    _start_resource_tracker(log)
    with _sigint_ignored():  # inherited by the child and by img2dataset's worker processes
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
        if child.is_alive():  # this process was interrupted (Ctrl-C) or failed: stop the whole download
            _kill_tree(child)
        private_tmp.cleanup()
    if progress:
        progress(finished(), shards)
    if child.exitcode != 0:
        raise CurateError(f"img2dataset failed (exit {child.exitcode}): {_last_line(log)}; full log in {log}")


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while the img2dataset child starts, so that it and the pools it starts inherit that.
    A terminal's Ctrl-C reaches every process of the group: img2dataset's child would die of it and leave
    its pool workers behind, orphaned, holding our stdout and stderr open. This way only this process is
    interrupted, and it stops the child's whole process tree (`_kill_tree`). A Ctrl-C within the few
    milliseconds of the start itself is lost (press it again)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread sets handlers
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _kill_tree(child: multiprocessing.process.BaseProcess) -> None:
    """Kill the img2dataset child and every process it started (it leads a process group of its own)."""
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:  # killed before it made its group: it has started no process yet
        child.kill()
    child.join()


def _start_resource_tracker(log: str) -> None:
    """Start multiprocessing's resource tracker (one per process tree, started by the first spawn) with
    the log as its stderr. It outlives img2dataset's process pools, and when a run is stopped (Ctrl-C)
    it warns about their leaked semaphores as it exits: lines for the log, not after our last line."""
    saved = os.dup(2)
    try:
        with open(log, "ab") as handle:
            os.dup2(handle.fileno(), 2)
            resource_tracker.ensure_running()  # a no-op if this process already started one
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _img2dataset_child(kwargs: dict, log: str, private_tmp: str) -> None:
    os.setpgrp()  # a group of its own, with every process img2dataset starts: `_kill_tree` stops them all
    os.environ["TMPDIR"] = tempfile.tempdir = private_tmp  # its workers inherit both
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
