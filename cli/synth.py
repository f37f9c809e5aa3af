"""`curate synth`."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from curate.synth import NoiseRates, SynthConfig, synthesize
from curate_cli.console import out, progress_bar

_RATES = NoiseRates()


def synth(
    out_dir: Annotated[
        str, typer.Argument(metavar="OUT", help="Folder to create (web/, curated/, eval/ inside).")
    ],
    n: Annotated[int, typer.Option("--n", help="Number of noisy web pairs.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Same seed, byte-identical files.")] = 0,
    image_size: Annotated[int, typer.Option(help="Side of the square images, in pixels.")] = 32,
    misaligned: Annotated[
        float, typer.Option(help="Share captioned with another image's caption.")
    ] = _RATES.misaligned,
    junk: Annotated[
        float, typer.Option(help="Share captioned with junk such as 'IMG_2041.JPG'.")
    ] = _RATES.junk,
    partial: Annotated[
        float, typer.Option(help="Share whose caption names one attribute only.")
    ] = _RATES.partial,
    duplicate: Annotated[
        float, typer.Option(help="Share that copy another pair, exactly or nearly.")
    ] = _RATES.duplicate,
    corrupt: Annotated[float, typer.Option(help="Share whose image bytes do not decode.")] = _RATES.corrupt,
    curated_fraction: Annotated[
        float, typer.Option(help="Size of the clean curated set, as a share of --n (0 to 1).")
    ] = 0.1,
    eval_per_class: Annotated[
        int, typer.Option(help="Eval images per class (64 classes, K with --concepts).")
    ] = 10,
    zipf: Annotated[
        float, typer.Option(help="Long tail of class frequencies: p(rank r) ∝ r^-zipf; 0 = uniform.")
    ] = 0.8,
    samples_per_shard: Annotated[int, typer.Option(help="Samples per web/curated shard.")] = 1000,
    image_format: Annotated[str, typer.Option(help="jpg, png or webp.")] = "jpg",
    concepts: Annotated[
        int | None,
        typer.Option(
            metavar="K",
            help="Only K seeded classes (1-64) in all three sets, each varied more (JPEG quality too): "
            "most pairs of a batch show the same thing in other words.",
        ),
    ] = None,
    workers: Annotated[int, typer.Option(help="Processes rendering shards.")] = min(4, os.cpu_count() or 1),
) -> None:
    """Make a noisy synthetic web crawl, a small clean curated set and a labelled eval set.

    Images are scenes of one shape (circle, square, triangle, diamond, hexagon, star, cross, ring) in one
    of 8 colours, 3 sizes and 5 positions on 6 background textures, so many pairs are near misses of each
    other. A class is a colour and a shape ("red circle"); class frequencies are long-tailed. Captions come
    from varied templates and synonyms. Each web pair carries its noise kind in its .json ("noise") and
    its shard's parquet:

    \b
      none        a faithful caption
      misaligned  the caption of another image (default 15%)
      junk        "IMG_2041.JPG", "click here", "untitled" (8%)
      partial     a caption naming one attribute only, e.g. "red" (10%)
      duplicate   an exact or near copy of another pair (7%); "duplicate_of" names the pair it copies
      corrupt     image bytes that do not decode (1%)

    --concepts K makes a crawl of few distinct things: K classes (colour and shape) drawn at random, each
    rendered at every size, position, background and a JPEG quality of 50-95, and captioned in many
    phrasings, so most pairs in a batch are "the same thing" (the regime where joint selection's cross
    terms meet false negatives). The curated set holds the same K classes and the eval set names only them.

    \b
    OUT/web/      the noisy pairs, img2dataset layout (NNNNN.tar, .parquet, _stats.json, sizes.json)
    OUT/curated/  clean pairs with a uniform class mix, for training a reference model
    OUT/eval/     clean labelled images in clip_benchmark's layout, with zero-shot templates

    Re-running with the same settings keeps finished shards.

    \b
    example: curate synth data --n 2000 --seed 1
             curate synth few --n 4000 --concepts 10
    """
    config = SynthConfig(
        n=n,
        seed=seed,
        image_size=image_size,
        noise=NoiseRates(
            misaligned=misaligned, junk=junk, partial=partial, duplicate=duplicate, corrupt=corrupt
        ),
        curated_fraction=curated_fraction,
        eval_per_class=eval_per_class,
        zipf=zipf,
        samples_per_shard=samples_per_shard,
        image_format=image_format,
        concepts=concepts,
    )
    with progress_bar("synth") as progress:
        summary = synthesize(config, str(out_dir), workers=workers, progress=progress)
    noise = ", ".join(f"{kind} {count}" for kind, count in sorted(summary.noise.items()))
    resumed = f" ({summary.shards_skipped} shards already there)" if summary.shards_skipped else ""
    classes = f" of {summary.classes} concepts" if concepts is not None else ""
    out.print(
        f"wrote {summary.web} web pairs{classes} ({noise}), {summary.curated} curated pairs and "
        f"{summary.eval} eval images to {summary.folder}{resumed}"
    )
