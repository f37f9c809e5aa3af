"""`curate import datacomp` and `curate import clip-retrieval`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from curate_cli.console import out, progress_bar
from curate_cli.help import GroupedHelp

if TYPE_CHECKING:
    from curate.imports import ImportConfig

import_app = typer.Typer(
    help="Write a score folder from the CLIP embeddings a pool ships (DataComp, LAION): no image, no GPU.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

Output = Annotated[str, typer.Option("--output", "-o", metavar="SCORES", help="Folder for the score files.")]
Shards = Annotated[
    str | None,
    typer.Option(
        metavar="SHARDS",
        help="Downloaded img2dataset shards (folder, glob or brace pattern): matched rows get their shard "
        "and key; the others import with shard '' (not downloaded) and are counted.",
    ),
]
Seed = Annotated[int, typer.Option(help="Draws the calibration's files, rows and batches.")]


@import_app.command(
    "datacomp", cls=GroupedHelp, short_help="A DataComp pool (.parquet + .npz) into a score folder."
)
def datacomp(
    pool: Annotated[
        str,
        typer.Argument(metavar="POOL", help="DataComp's metadata folder: .parquet and .npz files."),
    ],
    output: Output,
    embeddings: Annotated[
        str, typer.Option(help="Which of the .npz arrays: l14 (OpenAI CLIP ViT-L/14) or b32 (ViT-B/32).")
    ] = "l14",
    shards: Shards = None,
    seed: Seed = 0,
) -> None:
    """Import a DataComp pool: its metadata and its OpenAI CLIP embeddings, one score file per Parquet.

    Keys are DataComp's uids (with --shards, a downloaded sample's key in its shard, matched by the uid its
    .parquet keeps). Every metadata column comes along for select --where (clip_l14_similarity_score,
    original_width, ...; sha256 as pool_sha256), and `similarity` is DataComp's own
    clip_{l14,b32}_similarity_score, so select --method clipscore is DataComp's CLIP-score filter. t and
    b are fitted to the embeddings (a sigmoid pair loss for a softmax-trained model) and recorded; the
    import costs 0 FLOPs. Files already imported are skipped, so an interrupted run resumes.

    \b
    example: curate import datacomp datacomp/metadata -o scores/
             curate select scores/ -o manifest/ --method clipscore --ratio 0.7
             curate export manifest/ --datacomp-subset subset.npy
    """
    from curate.imports import ImportConfig

    config = ImportConfig(source="datacomp", embeddings=embeddings, shards=shards, seed=seed)
    _run(pool, output, config)


@import_app.command(
    "clip-retrieval",
    cls=GroupedHelp,
    short_help="clip-retrieval embeddings (LAION's) into a score folder.",
)
def clip_retrieval(
    folder: Annotated[
        str,
        typer.Argument(
            metavar="FOLDER", help="clip-retrieval's output: img_emb/, text_emb/ and metadata/ folders."
        ),
    ],
    output: Output,
    model: Annotated[
        str,
        typer.Option(
            metavar="NAME",
            help="What computed the embeddings, recorded as the reference (e.g. 'OpenAI CLIP ViT-L/14').",
        ),
    ] = "",
    key: Annotated[
        str,
        typer.Option(help="The metadata column that names a sample, and --shards is matched by: key or url."),
    ] = "key",
    shards: Shards = None,
    seed: Seed = 0,
) -> None:
    """Import embeddings in clip-retrieval's layout (LAION's released embeddings), one score file per
    metadata_N.parquet.

    Keys are the metadata's `key` column (img2dataset's key from the crawl that made the embeddings), or
    its `url` with --key url (for shards downloaded afresh, whose keys differ). Every metadata column comes
    along for select --where (a column named like a score column gets a pool_ prefix: pool_similarity,
    pool_status). t and b are fitted to the embeddings and recorded; the import costs 0 FLOPs. Files
    already imported are skipped, so an interrupted run resumes.

    \b
    example: curate import clip-retrieval laion-embeddings/ -o scores/ --model 'OpenAI CLIP ViT-L/14'
             curate import clip-retrieval laion-embeddings/ -o scores/ --key url --shards shards/
    """
    from curate.imports import ImportConfig

    config = ImportConfig(source="clip-retrieval", model=model, key=key, shards=shards, seed=seed)
    _run(folder, output, config)


def _run(pool: str, output: str, config: ImportConfig) -> None:
    from curate.imports import import_pool

    with progress_bar("import") as progress:
        summary = import_pool(pool, str(output), config, progress)
    failed = sum(summary.failed.values())
    reasons = f" ({', '.join(f'{r} {n}' for r, n in sorted(summary.failed.items()))})" if failed else ""
    skipped = f", {summary.files_skipped} already imported (skipped)" if summary.files_skipped else ""
    matched = (
        f"; {summary.matched} matched to {config.shards}, {summary.unmatched} not downloaded (shard '')"
        if config.shards
        else ""
    )
    calibration = summary.calibration
    how = "as the folder's files record" if summary.calibration_reused else f"fitted, seed {config.seed}"
    fitted = ""
    if calibration:
        fitted = f"; t = {calibration.logit_scale:.2f}, b = {calibration.logit_bias:.2f} ({how})"
    rate = f" at {summary.samples_per_second:.0f} samples/s" if summary.files_done else ""
    out.print(
        f"imported {summary.files_done} files{skipped}: {summary.ok} ok, {failed} failed{reasons}{matched}"
        f"{fitted}{rate}, 0 FLOPs → {output}"
    )
