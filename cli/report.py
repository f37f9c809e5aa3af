"""`curate report`."""

from __future__ import annotations

from typing import Annotated

import typer

from curate_cli.console import err, out, progress_bar


def report_command(
    output: Annotated[
        str, typer.Option("--output", "-o", metavar="DIR", help="Folder for index.html and the PNGs.")
    ],
    inputs: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[RUN|MANIFEST|SCORES]...",
            help="Run folders of curate train; a manifest or score folder is recognised by what it holds.",
            show_default=False,
        ),
    ] = None,
    scores: Annotated[
        str | None,
        typer.Option(
            metavar="DIR",
            help="Reference scores: every sample's similarity (default: those a manifest was selected from).",
        ),
    ] = None,
    manifest: Annotated[
        list[str] | None,
        typer.Option(
            metavar="DIR", help="A manifest folder of curate select; repeat for several.", show_default=False
        ),
    ] = None,
    shards: Annotated[
        str | None,
        typer.Option(
            metavar="DIR",
            help="The shards: contact-sheet images and noise kinds (default: as recorded by select).",
        ),
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option(
            metavar="RUN",
            help="The run the headline compares every learner with (default: uniform, else the first run).",
            show_default=False,
        ),
    ] = None,
    top: Annotated[int, typer.Option(metavar="N", help="Samples in each half of the contact sheet.")] = 12,
    title: Annotated[str, typer.Option(help="Page title.")] = "curate report",
) -> None:
    """Plots and one static HTML page from runs, scores and manifests; open DIR/index.html from disk.

    Runs: zero-shot accuracy and retrieval against the training step and against total FLOPs and seconds
    with everything upstream counted (the reference's training and scoring, followed through the inputs each
    run, manifest and score folder records); top-1 against total FLOPs in two accountings, the reference's
    training charged and the reference given (its scoring charged, its training not); top-1 against the
    filter ratio F per selection method, where the runs' selections used several; loss curves and a table
    of final numbers; stdout ends with a headline, one line per learner: its top-1 and its total compute
    relative to --baseline.
    Manifests and scores: reference similarity of selected vs rejected samples, the batch score per
    super-batch, the share of each noise kind in each selection (synthetic shards carry it), and a contact
    sheet of the highest- and lowest-scored samples with their captions. Sections appear only for what is
    given.

    \b
    example: curate report runs/baseline runs/jest -o report/ --manifest manifest/ --scores scores/
             curate report scores/ -o report/ --shards shards/
    """
    from curate.errors import CurateError
    from curate.report import ReportConfig, classify, report

    runs, manifests, score_folders = classify(inputs or [])
    manifests += manifest or []
    score_folders += [scores] if scores else []
    if len(set(score_folders)) > 1:
        raise CurateError(f"only one score folder per report: {' and '.join(sorted(set(score_folders)))}")
    config = ReportConfig(
        runs=tuple(runs),
        scores=score_folders[0] if score_folders else None,
        manifests=tuple(manifests),
        shards=shards,
        baseline=baseline,
        top=top,
        title=title,
    )
    with progress_bar("report", unit="figures") as progress:
        summary = report(config, output, progress)
    for note in summary.notes:
        err.print(f"note: {note}")
    parts = [f"{summary.runs} run{'s' * (summary.runs != 1)}"] if summary.runs else []
    parts += [f"{summary.manifests} manifest{'s' * (summary.manifests != 1)}"] if summary.manifests else []
    parts += [f"scores of {summary.scored} samples"] if summary.scored is not None else []
    out.print(f"wrote {len(summary.figures)} figures for {', '.join(parts)} → {summary.index}")
    for line in summary.headline:
        out.print(line, markup=False)
