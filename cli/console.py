"""What every command shares: the stdout and stderr consoles, its own command line and the progress bar."""

from __future__ import annotations

import contextlib
import datetime
import shlex
import sys
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Data and summaries go to stdout; progress and errors to stderr, so pipelines can capture one or the other.
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def command_line() -> str:
    """This run's command, quoted as a shell would re-run it: what a manifest, export or run records of
    how it was made. Always spelled `curate`: sys.argv[0] is a venv's script path, or `-m`'s module file."""
    return shlex.join(["curate", *sys.argv[1:]])


@contextlib.contextmanager
def progress_bar(description: str, unit: str = "samples") -> Iterator[Callable[..., None]]:
    """Yield a `progress(done, total, status="")` callback driving a rich bar on stderr; `status` is a short
    text shown after the bar (loss, samples/s).

    When stderr is not a terminal (a log file, CI, `make -j -Oline`), a live bar cannot redraw: the callback
    prints a plain line every PLAIN_EVERY_S seconds instead, and one at the end.
    """
    if not err.is_terminal:
        with _plain_progress(description, unit) as update:
            yield update
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    )
    # Started on the first update, so a command that fails while validating prints no empty bar.
    bar = Progress(*columns, console=err, transient=False)
    task = bar.add_task(description, total=None, start=False, status="")

    def update(done: int, total: int | None = None, status: str = "") -> None:
        if not bar.live.is_started:
            bar.start()
            bar.start_task(task)
        bar.update(task, completed=done, total=total, status=status)

    try:
        yield update
    finally:
        if bar.live.is_started:
            bar.stop()


PLAIN_EVERY_S = 15.0


@contextlib.contextmanager
def _plain_progress(description: str, unit: str) -> Iterator[Callable[..., None]]:
    start = time.monotonic()
    last_print = start
    state: dict = {}

    def line() -> str:
        done, total, status = state["done"], state["total"], state["status"]
        elapsed = time.monotonic() - start
        text = f"{description} {done}/{total if total else '?'} {unit}"
        if total:
            text += f" {100 * done / total:.0f}%"
        text += f" {datetime.timedelta(seconds=round(elapsed))}"
        if total and done:
            text += f" eta {datetime.timedelta(seconds=round(elapsed * (total - done) / done))}"
        return f"{text} {status}".rstrip()

    def update(done: int, total: int | None = None, status: str = "") -> None:
        nonlocal last_print
        state.update(done=done, total=total, status=status)
        now = time.monotonic()
        if now - last_print >= PLAIN_EVERY_S:
            last_print = now
            err.print(line(), markup=False)

    try:
        yield update
    finally:
        if state:
            err.print(line(), markup=False)
