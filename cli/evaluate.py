"""`curate eval`."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from curate_cli.console import err, out, progress_bar

# Table rows: (label, metric key prefix); the keys are prefix + k.
_ROWS = (
    ("zero-shot", "zeroshot_top"),
    ("image → text", "image_to_text_r"),
    ("text → image", "text_to_image_r"),
)


def evaluate_command(
    checkpoint: Annotated[
        str,
        typer.Argument(
            metavar="CKPT",
            help="A checkpoint (runs/NAME/latest.pt), or a model name as for --model (see curate models).",
        ),
    ],
    evalset: Annotated[
        str,
        typer.Argument(
            metavar="EVALSET",
            help="Eval folder in clip_benchmark's webdataset layout: test/*.tar, classnames.txt, templates.",
        ),
    ],
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object on stdout instead of the table.")
    ] = False,
    pretrained: Annotated[
        str | None, typer.Option(help="open_clip pretrained tag (e.g. webli) or weights file, for a name.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images (or prompts) per forward pass.")] = 256,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda or cuda:N.")] = "auto",
    precision: Annotated[
        str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16 or fp16.")
    ] = "auto",
    split: Annotated[str, typer.Option(help="Which folder of tars to evaluate on.")] = "test",
    allow_random_init: Annotated[
        bool, typer.Option(help="Accept a model name without weights (tests and benchmarks only).")
    ] = False,
) -> None:
    """Zero-shot classification and image-text retrieval of a model on an eval set.

    Zero-shot: each class is the mean embedding of its prompts (the templates with {c} replaced by the
    class name); an image is right when its class is the nearest (top-1) or among the 5 nearest (top-5).
    Retrieval, when every image has a caption (.txt, one per line): recall@1/@5 of the image's caption
    among all captions (image → text) and of the caption's image among all images (text → image);
    identical captions count as one. Works on clip_benchmark's webdataset sets (several tars,
    .webp/.jpg/.png, dataset_type.txt "retrieval") and on `curate synth`'s eval/.

    \b
    example: curate eval runs/demo/latest.pt data/eval
             curate eval runs/demo/latest.pt data/eval --json | jq .zeroshot_top1
             curate eval ViT-B-16-SigLIP wds_cifar10/ --pretrained webli
    """
    from curate.evaluate import EvalConfig, run_eval

    config = EvalConfig(
        model=checkpoint,
        pretrained=pretrained,
        batch_size=batch_size,
        device=device,
        precision=precision,
        split=split,
        allow_random_init=allow_random_init,
    )
    with progress_bar("eval", unit="images") as progress:
        report = run_eval(evalset, config, progress)
    for shard, why in report.damaged:
        err.print(f"warning: {shard} is damaged ({why}); its readable samples were evaluated")
    if report.skipped:
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(report.skipped.items()))
        err.print(f"warning: {sum(report.skipped.values())} samples left out ({reasons})")
    if "captions" not in report.metrics and report.captioned:
        err.print(
            f"warning: no retrieval metrics: only {report.captioned} of {report.metrics['images']} images "
            "have a caption (.txt)"
        )
    if json_output:
        out.out(json.dumps(report.to_json()), highlight=False)
        return
    metrics = report.metrics
    out.out(f"{'':<14}{'@1':>8}{'@5':>8}", highlight=False)
    for label, prefix in _ROWS:
        if f"{prefix}1" in metrics:
            cells = [metrics.get(f"{prefix}{k}") for k in (1, 5)]
            out.out(label.ljust(14) + "".join(_cell(value) for value in cells), highlight=False)
    parts = [f"{metrics['images']} images"]
    if "classes" in metrics:
        parts.append(f"{metrics['classes']} classes × {metrics['templates']} templates")
    if "captions" in metrics:
        parts.append(f"{metrics['captions']} captions")
    out.out(
        f"evaluated {report.model} on {report.evalset}: {', '.join(parts)} in {report.seconds:.1f} s "
        f"on {report.device}",
        highlight=False,
    )


def _cell(value: float | None) -> str:
    return f"{value:>8.4f}" if value is not None else f"{'-':>8}"  # "-": fewer than 5 classes or captions
