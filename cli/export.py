"""`curate export`."""

from __future__ import annotations

from typing import Annotated

import typer

from curate_cli.console import command_line, err, out, progress_bar


def export_command(
    manifest: Annotated[
        str,
        typer.Argument(metavar="MANIFEST", help="Manifest folder (or manifest.parquet) from curate select."),
    ],
    output: Annotated[
        str | None,
        typer.Option(
            "--output", "-o", metavar="OUT", help="Folder for the new shards (a path or fsspec URL)."
        ),
    ] = None,
    shards: Annotated[
        str | None,
        typer.Option(
            metavar="SHARDS",
            help="Source shards: folder, glob or brace pattern (default: as recorded by select --shards).",
        ),
    ] = None,
    samples_per_shard: Annotated[
        int | None,
        typer.Option(
            metavar="K", help="Samples per output shard (default: ≤ 10000, and at least 16 shards)."
        ),
    ] = None,
    allow_missing: Annotated[
        bool,
        typer.Option(help="Go on when under 99% of the manifest's keys are in their shards (default: stop)."),
    ] = False,
    datacomp_subset: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            help="Also or instead: the selected uids as DataComp's subset file (.npy of u8,u8, sorted), for "
            "its resharder. Needs a score folder of curate import datacomp; no shards.",
        ),
    ] = None,
    url_list: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            help="Also or instead: the selected samples' url and caption (and uid) as Parquet, for "
            "img2dataset to download only them. Needs a score folder of curate import; no shards.",
        ),
    ] = None,
) -> None:
    """Copy the chosen samples into new webdataset shards, in training order, ready for open_clip's trainer.

    Samples are written in training order: batch by batch, in the manifest's order within a batch, so
    consecutive batches land in consecutive shards (shard i holds samples i·K to (i+1)·K − 1; with K the
    batch size, shard t is step t). Each sample's .json gains "batch": t, and each shard's .parquet a
    batch and a source_key column. A key repeated by select --steps is written at each of its steps; its
    n-th repeat is named KEY_n (the next free KEY_m should another key have that name), its .json giving
    its "source_key". Every other member (image, .txt, ...) is copied byte for byte, never re-encoded;
    each source shard is read once, in order. Output is img2dataset's layout (NNNNN.tar, .parquet,
    _stats.json) plus sizes.json. Each image is checked against the sha256 it was scored with, so a
    --shards folder of another crawl is refused, not copied; under 99% of the manifest's keys found
    stops the export (--allow-missing goes on). Re-running resumes: shards already complete are kept.
    A loader that shuffles (open_clip's does) turns the batches back into a set: see docs/guides/open-clip.md.

    --datacomp-subset and --url-list write the selection as lists instead of (or beside) shards, from the
    score folder the manifest was selected from (a folder of curate import, which keeps each sample's uid
    and url): neither reads a shard, so neither needs -o or --shards.

    \b
    example: curate export manifest/ -o curated/ --shards shards/
             python -m open_clip_train.main --train-data 'curated/{00000..00015}.tar' ...
             curate export manifest/ --datacomp-subset subset.npy --url-list urls.parquet
    """
    from curate.errors import CurateError

    if output is None and datacomp_subset is None and url_list is None:
        raise CurateError("give -o OUT (new shards), --datacomp-subset FILE or --url-list FILE")
    if output is not None:
        _export_shards(manifest, output, shards, samples_per_shard, allow_missing)
    if datacomp_subset is not None or url_list is not None:
        _export_lists(manifest, datacomp_subset, url_list)


def _export_shards(
    manifest: str, output: str, shards: str | None, samples_per_shard: int | None, allow_missing: bool
) -> None:
    from curate.export import ExportConfig, export

    config = ExportConfig(
        shards=shards,
        samples_per_shard=samples_per_shard,
        command=command_line(),
        allow_missing=allow_missing,
    )
    with progress_bar("export") as progress:
        summary = export(manifest, output, config, progress)
    for shard, why in summary.damaged:
        err.print(f"warning: source shard {shard} is damaged ({why}); samples after the damage are missing")
    if summary.rebuilt:
        examples = "; ".join(f"{shard}: {why}" for shard, why in summary.rebuilt[:3])
        more = ", ..." if len(summary.rebuilt) > 3 else ""
        err.print(
            f"warning: the parquet rows of {len(summary.rebuilt)} source shard(s) were rebuilt from their "
            f".json members, without the parquet's extra columns ({examples}{more})",
            markup=False,
        )
    if summary.missing:
        err.print(
            f"warning: {summary.missing} chosen samples were not in their source shard "
            f"(e.g. {', '.join(summary.missing_examples)})"
        )
    last = summary.shards - 1
    skipped = f", {summary.shards_skipped} already done (kept)" if summary.shards_skipped else ""
    repeats = f" ({summary.repeats} of them repeats, named KEY_n)" if summary.repeats else ""
    found = summary.keys_wanted - summary.keys_missing
    checked = f", {summary.verified} checked by sha256" if summary.verified else ""
    out.print(
        f"wrote {summary.samples} samples{repeats} into {summary.shards_written} shards "
        f"of ≤ {summary.samples_per_shard}{skipped}, reading {summary.source_shards_read} source shards "
        f"({found} of {summary.keys_wanted} manifest keys found{checked}) "
        f"→ {output}/{{00000..{last:05d}}}.tar"
    )


def _export_lists(manifest: str, datacomp_subset: str | None, url_list: str | None) -> None:
    from curate.export import write_lists

    summary = write_lists(manifest, datacomp_subset, url_list)
    if datacomp_subset is not None:
        out.print(f"wrote {summary.subset} uids (u8,u8, sorted) → {datacomp_subset}")
    if url_list is not None:
        no_url = f" ({summary.no_url} selected samples have no url)" if summary.no_url else ""
        out.print(f"wrote {summary.urls} urls{no_url} → {url_list}")
