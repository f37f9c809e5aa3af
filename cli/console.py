"""What every command shares: a stderr console, one-line errors and the progress bar."""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def progress_bar(description: str, unit: str = "samples") -> Iterator[Callable[..., None]]:
    """Yield a `progress(done, total, status="")` callback driving a rich bar on stderr; `status` is a short
    text shown after the bar (loss, samples/s)."""
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
