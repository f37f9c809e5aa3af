"""`curate report`: runs, scores and manifests → PNG figures and one static `index.html` in a folder.

Sections appear only for what was given: runs (eval curves against the step and against total compute with
everything upstream counted, from `curate.cost`; training curves; a table of final numbers), selections
(reference similarity of selected vs rejected samples, batch score per super-batch), noise (the share of each
kind in the pool, in each selection and in what each run trained on), and a contact sheet of the highest- and
lowest-scored samples. Shards supply the images and, for synthetic data, the noise kinds. load.py reads,
sections.py lays out, plots.py draws, page.py writes HTML.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from curate.errors import CurateError
from curate.fileio import local_path, output_lock, output_path, write_bytes_atomic
from curate.report import sections
from curate.report.load import (
    Manifest,
    Run,
    read_images,
    read_manifest_folder,
    read_run,
    read_scores,
    read_shard_columns,
    score_model,
    shard_tables,
)
from curate.report.page import render
from curate.runtime import Progress

INDEX_FILE = "index.html"
SHARD_COLUMNS = ["key", "caption", "noise"]  # what the page wants of the shards' tables, read once


@dataclass(frozen=True)
class ReportConfig:
    runs: tuple[str, ...] = ()
    scores: str | None = None
    manifests: tuple[str, ...] = ()
    shards: str | None = None
    baseline: str | None = None  # the run the headline compares with (default: uniform, else the first)
    top: int = 12  # samples in each half of the contact sheet
    title: str = "curate report"

    def __post_init__(self) -> None:
        if not (self.runs or self.scores or self.manifests):
            raise CurateError("nothing to report: give run folders, --scores DIR or --manifest DIR")
        if self.top < 0:
            raise CurateError(f"--top must be 0 or more, got {self.top}")
        if self.shards and not local_path(self.shards, "--shards").is_dir():
            raise CurateError(f"--shards {self.shards}: no such folder")


@dataclass
class ReportSummary:
    index: str
    figures: list[str] = field(default_factory=list)
    runs: int = 0
    manifests: int = 0
    scored: int | None = None  # samples in the score folder
    notes: list[str] = field(default_factory=list)
    headline: list[str] = field(default_factory=list)  # per learner: top-1 and total compute vs baseline


def report(config: ReportConfig, out: str, progress: Progress | None = None) -> ReportSummary:
    """Write `out/index.html` and its PNGs; return what was written."""
    folder = output_path(out)
    with output_lock(folder):
        return _report_into(folder, config, progress)


def _report_into(folder: Path, config: ReportConfig, progress: Progress | None) -> ReportSummary:
    runs = [read_run(p) for p in config.runs]
    _relabel(runs, config.runs)
    manifests = [read_manifest_folder(p) for p in config.manifests]
    _relabel(manifests, config.manifests)
    scores_dir = config.scores or next((m.recorded_input("scores") for m in manifests), None)
    shards_dir = config.shards or next((m.recorded_input("shards") for m in manifests), None)
    scores = read_scores(scores_dir) if scores_dir else None
    shard_columns = read_shard_columns(shard_tables(shards_dir), SHARD_COLUMNS) if shards_dir else None
    noise = _noise(shard_columns)
    headline = sections.headline(runs, config.baseline)  # before any drawing: a bad --baseline fails fast

    inputs = [("run", p) for p in config.runs] + [("manifest", p) for p in config.manifests]
    inputs += [("scores", scores_dir)] if scores_dir else []
    inputs += [("shards", shards_dir)] if shards_dir else []
    page = []
    if runs:
        page.append(sections.runs_section(runs))
    if manifests or scores is not None:
        reference = score_model(scores_dir) if scores_dir else None
        page.append(sections.selection_section(manifests, scores, reference, noise))
    noise_section = sections.noise_section(manifests, scores, noise, runs, _run_noise(runs))
    if noise_section:
        page.append(noise_section)
    if config.top and (scores is not None or manifests):
        wanted = pd.concat(sections.extremes(manifests, scores, config.top).values())
        images = read_images(shards_dir, wanted) if shards_dir else {}
        page.append(sections.contact_section(manifests, scores, shard_columns, images, config.top))

    folder.mkdir(parents=True, exist_ok=True)
    figures = [f for s in page for f in s.figures]
    for done, figure in enumerate(figures, 1):
        write_bytes_atomic(str(folder / figure.file), figure.png)
        if progress:
            progress(done, len(figures))
    index = str(folder / INDEX_FILE)
    write_bytes_atomic(index, render(config.title, inputs, page).encode())
    return ReportSummary(
        index=index,
        figures=[f.file for f in figures],
        runs=len(runs),
        manifests=len(manifests),
        scored=None if scores is None else len(scores),
        notes=[n for s in page for n in s.notes],
        headline=headline,
    )


def _noise(shard_columns: pd.DataFrame | None) -> pd.Series | None:
    """key -> noise kind, where the shards carry the synthetic crawl's `noise` column."""
    if shard_columns is None or "noise" not in shard_columns:
        return None
    return shard_columns["noise"].fillna("unknown")


def _run_noise(runs: list[Run]) -> dict[str, pd.Series]:
    """Each run's noise labels, from the shards it trained on (read once per distinct data): runs on other
    shards may reuse the same keys (the reference's curated set and the crawl both start at 0000000)."""
    by_data: dict[tuple[str, ...], pd.Series | None] = {}
    out = {}
    for run in runs:
        if run.config is None or not run.trained_keys:
            continue
        paths = run.config.data.paths
        if paths not in by_data:
            try:
                by_data[paths] = _noise(read_shard_columns(shard_tables(paths, "run data"), ["key", "noise"]))
            except CurateError:  # the run's data has moved since it trained: no shares for it
                by_data[paths] = None
        if by_data[paths] is not None:
            out[run.name] = by_data[paths]
    return out


def _relabel(items: list[Run] | list[Manifest], paths: Sequence[str]) -> None:
    """Label by folder name; where two share a name, by as many of their trailing folders as tell them apart
    (seed0/runs/jest and seed0/ratio-0.5/runs/jest: seed0/runs/jest and ratio-0.5/runs/jest)."""
    names = [item.name for item in items]
    parts = [local_path(path, "report input").resolve().parts for path in paths]
    for depth in range(2, max((len(p) for p in parts), default=0) + 1):
        labels = [
            "/".join(folders[-depth:]) if names.count(name) > 1 else name
            for name, folders in zip(names, parts, strict=True)
        ]
        if len(set(labels)) == len(labels):
            for item, label in zip(items, labels, strict=True):
                item.name = label
            return
    if len(set(names)) < len(names):
        raise CurateError(f"two inputs have the same label: {', '.join(names)}")
