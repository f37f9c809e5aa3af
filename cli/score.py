"""`curate score` and `curate models`."""

from __future__ import annotations

from typing import Annotated

import typer

from curate_cli.backend import Backend, GpusPerWorker, RayAddress, WorkersPerNode, ray_config
from curate_cli.console import err, out, progress_bar


def score(
    shards: Annotated[
        list[str], typer.Argument(metavar="SHARDS...", help="Shard folder(s), tar paths or a brace pattern.")
    ],
    output: Annotated[
        str, typer.Option("--output", "-o", metavar="SCORES", help="Folder for the score files.")
    ],
    model: Annotated[
        str, typer.Option(help="Built-in (siglip-tiny, siglip-small), open_clip name, or a checkpoint .pt.")
    ],
    pretrained: Annotated[
        str | None, typer.Option(help="open_clip pretrained tag (e.g. webli) or a weights file.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Samples per forward pass.")] = 256,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda or cuda:N.")] = "auto",
    precision: Annotated[
        str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16 or fp16.")
    ] = "auto",
    workers: Annotated[
        int, typer.Option(help="DataLoader processes decoding images (0 = in process; local backend).")
    ] = 2,
    overwrite: Annotated[bool, typer.Option(help="Recompute shards that already have a score file.")] = False,
    allow_random_init: Annotated[
        bool, typer.Option(help="Accept a model without weights (tests and benchmarks only).")
    ] = False,
    seed: Annotated[int, typer.Option(help="Draws a random-init model's weights (--allow-random-init).")] = 0,
    resolution: Annotated[
        int | None,
        typer.Option(
            metavar="PX",
            help="Encode images at PX pixels instead of the model's own size (ViTs only; a multiple of the "
            "patch size): half the side is a quarter of the image tokens, so cheaper scoring (Flexi-JEST). "
            "Recorded in the score files (curate.resolution); a folder holds one resolution.",
        ),
    ] = None,
    keep_going: Annotated[
        bool,
        typer.Option(
            help="Exit 0 even if some shards are damaged (they stay unscored; a rerun retries them)."
        ),
    ] = False,
    backend: Backend = "local",
    ray_address: RayAddress = None,
    gpus_per_worker: GpusPerWorker = 0.0,
    workers_per_node: WorkersPerNode = None,
) -> None:
    """Embed every image and caption with a reference model; write one Parquet per shard.

    Columns: key, shard, caption, image_emb and text_emb (L2-normalised, float16), similarity (cosine)
    and status ("ok", or why the sample could not be scored: undecodable_image, empty_caption, ...).
    The file metadata holds the model's t and b, so `curate select` needs no model. Shards that already
    have a score file are skipped, so an interrupted run resumes; --overwrite recomputes. A shard that
    cannot be read whole (a truncated, empty or non-tar file, or fewer samples than its _stats.json
    counts) gets no score file: the run exits 1 naming it (0 with --keep-going) and a rerun retries it.

    --resolution PX scores at low resolution: images are decoded straight to PX pixels and the ViT runs on
    fewer tokens (position embeddings interpolated), e.g. 112 for a 224 px ViT-B-16: a quarter of the tokens.

    --backend ray scores whole shards on a Ray cluster, one model replica per worker, and writes the same
    files; shards and SCORES must then be on storage every node sees.

    \b
    example: curate score shards/ -o scores/ --model ViT-B-16-SigLIP --pretrained webli
             curate score shards/ -o scores/ --model runs/reference/latest.pt
             curate score shards/ -o scores-112/ --model ViT-B-16-SigLIP --pretrained webli --resolution 112
             curate score /shared/shards -o /shared/scores --model M --backend ray --ray-address head:6379
    """
    from curate.score import ScoreConfig, score_shards

    config = ScoreConfig(
        model=model,
        pretrained=pretrained,
        batch_size=batch_size,
        device=device,
        precision=precision,
        workers=workers,
        overwrite=overwrite,
        allow_random_init=allow_random_init,
        seed=seed,
        resolution=resolution,
        backend=backend,
        ray=ray_config(ray_address, gpus_per_worker, workers_per_node),
    )
    with progress_bar("score") as progress:
        summary = score_shards(shards if len(shards) > 1 else shards[0], str(output), config, progress)
    for shard, why in summary.damaged:
        err.print(f"warning: {shard} is damaged ({why}); not scored, a rerun retries it")
    failed = sum(summary.failed.values())
    reasons = f" ({', '.join(f'{r} {n}' for r, n in sorted(summary.failed.items()))})" if failed else ""
    skipped = f", {summary.shards_skipped} already scored (skipped)" if summary.shards_skipped else ""
    rate = (
        f" at {summary.samples_per_second:.0f} samples/s on {summary.device}" if summary.shards_done else ""
    )
    counts = f"{summary.ok} ok, {failed} failed{reasons}"
    damaged = f", {len(summary.damaged)} damaged (not scored)" if summary.damaged else ""
    out.print(f"scored {summary.shards_done} shards{skipped}{damaged}: {counts}{rate} → {output}")
    if not keep_going:
        summary.refuse_damage()


def models() -> None:
    """List the built-in models and how to use open_clip's models and checkpoints."""
    from curate.models import BUILTINS

    out.print("built-in (no download; for laptops, tests and the demo):")
    for model in BUILTINS.values():
        out.print(f"  {model.name:<14} {model.summary}")
    out.print(
        "open_clip models: any name from open_clip.list_models() with --pretrained TAG, e.g.\n"
        "  --model ViT-B-16-SigLIP --pretrained webli\n"
        "  (its tags: python -c 'import open_clip; print(open_clip.list_pretrained_tags_by_model(NAME))')\n"
        "  --model ViT-B-16-SigLIP --pretrained /path/to/open_clip_model.safetensors   (offline)\n"
        "checkpoints: --model runs/NAME/latest.pt (written by curate train; loaded with weights_only=True)"
    )
