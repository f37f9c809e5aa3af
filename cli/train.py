"""`curate train`."""

from __future__ import annotations

from typing import Annotated

import typer

from curate_cli.console import command_line, err, out, progress_bar

# --help groups train's options by what they set, so the three ways to pick data stand apart.
DATA = "Data"
MODEL = "Model"
OPTIMISATION = "Optimisation"
ONLINE = "Online JEST"
EVAL = "Evaluation and checkpoints"
HARDWARE = "Devices and processes"


def train_command(
    data: Annotated[
        list[str], typer.Argument(metavar="DATA...", help="Shard folder(s), tar paths or a brace pattern.")
    ],
    output: Annotated[
        str, typer.Option("--output", "-o", metavar="RUN", help="Run folder (checkpoints, metrics).")
    ],
    model: Annotated[
        str,
        typer.Option(
            help="Built-in (siglip-tiny, siglip-small), open_clip name or checkpoint.", rich_help_panel=MODEL
        ),
    ] = "siglip-tiny",
    pretrained: Annotated[
        str | None, typer.Option(help="Start from open_clip weights (tag or file).", rich_help_panel=MODEL)
    ] = None,
    manifest: Annotated[
        str | None,
        typer.Option(
            help="Train on this `curate select` manifest's batches (step t trains batch t).",
            rich_help_panel=DATA,
        ),
    ] = None,
    order: Annotated[
        str | None,
        typer.Option(
            help="With --manifest: batches (default: JEST's batches in order) or shuffle (keys as a set).",
            rich_help_panel=DATA,
        ),
    ] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps.", rich_help_panel=OPTIMISATION)] = 1000,
    batch_size: Annotated[
        int | None,
        typer.Option(
            help="Pairs per step (b); default 256, or the manifest's batch size.",
            rich_help_panel=OPTIMISATION,
        ),
    ] = None,
    lr: Annotated[float, typer.Option(help="Peak learning rate.", rich_help_panel=OPTIMISATION)] = 1e-3,
    warmup: Annotated[
        int, typer.Option(help="Linear warmup steps, then cosine decay to 0.", rich_help_panel=OPTIMISATION)
    ] = 100,
    wd: Annotated[
        float, typer.Option(help="AdamW weight decay (matrices only).", rich_help_panel=OPTIMISATION)
    ] = 0.1,
    beta2: Annotated[
        float,
        typer.Option(help="AdamW β2; 0.95 is SigLIP's large-batch setting.", rich_help_panel=OPTIMISATION),
    ] = 0.95,
    grad_clip: Annotated[float, typer.Option(help="Gradient norm clip.", rich_help_panel=OPTIMISATION)] = 1.0,
    eval_set: Annotated[
        str | None,
        typer.Option("--eval", help="Eval set (clip_benchmark layout) to evaluate on.", rich_help_panel=EVAL),
    ] = None,
    eval_every: Annotated[
        int, typer.Option(help="Evaluate every N steps (0: at the end only).", rich_help_panel=EVAL)
    ] = 0,
    save_every: Annotated[
        int, typer.Option(help="Checkpoint every N steps (0: at the end only).", rich_help_panel=EVAL)
    ] = 0,
    log_every: Annotated[
        int, typer.Option(help="Write metrics.jsonl every N steps.", rich_help_panel=EVAL)
    ] = 10,
    workers: Annotated[
        int, typer.Option(help="DataLoader processes decoding images.", rich_help_panel=DATA)
    ] = 2,
    device: Annotated[
        str, typer.Option(help="auto (CUDA when present), cpu, cuda or cuda:N.", rich_help_panel=HARDWARE)
    ] = "auto",
    precision: Annotated[
        str,
        typer.Option(
            help="auto (bf16 autocast on CUDA, fp32 on CPU), fp32, bf16, fp16 (loss-scaled).",
            rich_help_panel=HARDWARE,
        ),
    ] = "auto",
    seed: Annotated[
        int, typer.Option(help="Seeds the model init and the data order.", rich_help_panel=OPTIMISATION)
    ] = 0,
    resume: Annotated[
        bool, typer.Option(help="Continue RUN from RUN/latest.pt, exactly.", rich_help_panel=EVAL)
    ] = False,
    cache: Annotated[
        str,
        typer.Option(
            help="memory (decode once), stream (tars + shuffle buffer) or auto.", rich_help_panel=DATA
        ),
    ] = "auto",
    shuffle_buffer: Annotated[
        int, typer.Option(help="Samples in the streaming shuffle buffer.", rich_help_panel=DATA)
    ] = 10_000,
    allow_missing: Annotated[
        bool,
        typer.Option(
            help="Train on a --manifest even when the data holds under 99% of its keys.", rich_help_panel=DATA
        ),
    ] = False,
    online_jest: Annotated[
        bool, typer.Option(help="Select each batch with JEST against --ref scores.", rich_help_panel=ONLINE)
    ] = False,
    ref: Annotated[
        str | None,
        typer.Option(
            help="Reference scores (`curate score` output) for --online-jest.", rich_help_panel=ONLINE
        ),
    ] = None,
    ratio: Annotated[
        float,
        typer.Option(
            help="Online JEST filtering ratio F: super-batch B = b / (1 - F).", rich_help_panel=ONLINE
        ),
    ] = 0.8,
    chunks: Annotated[int, typer.Option(help="Online JEST chunks N.", rich_help_panel=ONLINE)] = 16,
    criterion: Annotated[
        str, typer.Option(help="learnability, easy or hard.", rich_help_panel=ONLINE)
    ] = "learnability",
    temperature: Annotated[float, typer.Option(help="Sampling temperature τ.", rich_help_panel=ONLINE)] = 1.0,
    false_negatives: Annotated[
        str | None,
        typer.Option(
            metavar="none|mask:T",
            help="Online JEST: leave out of the cross terms every pair the reference sees as one thing "
            "(image-image or text-text cosine above T), as curate select --false-negatives does.",
            rich_help_panel=ONLINE,
        ),
    ] = None,
    score_resolution: Annotated[
        int | None,
        typer.Option(
            metavar="R",
            help="Online JEST: the learner scores each super-batch at R px (ViTs; Flexi-JEST).",
            rich_help_panel=ONLINE,
        ),
    ] = None,
    online_scope: Annotated[
        str,
        typer.Option(
            help="Online JEST under several processes: global chooses b of the whole super-batch (the "
            "chosen pairs move between processes); local has each process keep b/W of its own B/W.",
            rich_help_panel=ONLINE,
        ),
    ] = "global",
    collective_timeout: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            help="Under torchrun or srun: how long a process waits for the others before failing.",
            rich_help_panel=HARDWARE,
        ),
    ] = 600.0,
    multi_resolution: Annotated[
        int | None,
        typer.Option(
            metavar="R",
            help="Train a random half of each batch at R px, the rest at full size (ViTs).",
            rich_help_panel=OPTIMISATION,
        ),
    ] = None,
) -> None:
    """Train a SigLIP model (open_clip classes, SigLipLoss) on shards, a manifest's batches, or online JEST.

    AdamW (β2 0.95), linear warmup and cosine decay, weight decay on matrices, gradient clipping, bf16
    autocast on CUDA. Data that fits in a quarter of RAM is decoded once into memory; larger data streams
    from the tars through DataLoader workers and a shuffle buffer. RUN/ gets config.json, metrics.jsonl,
    batches.parquet (the keys each step trained on), checkpoints/step_N.pt and latest.pt (loadable with
    torch.load(weights_only=True), usable as `curate score --model RUN/latest.pt` and `curate eval
    RUN/latest.pt`). --resume continues exactly (a stream: under the same --workers and --shuffle-buffer).
    A loss or weights turned NaN or infinite stop the run with an error, and no checkpoint of them is written.

    With --manifest (curate select's output), step t trains exactly the samples of the manifest's batch t:
    JEST chose them together. Select with --steps equal to this run's --steps for one batch per step;
    past the last batch they start over in a seeded order (a warning; the epoch is in metrics.jsonl).
    The manifest's batch size is the run's. --order shuffle trains its keys as a set instead, in random
    batches. Streaming decodes a few batches ahead, reading only the shards they live in. Data that holds
    under 99% of the manifest's keys is refused (the wrong shards?) unless --allow-missing.

    With --online-jest (the paper's setting, reference cached): each step embeds a super-batch of
    B = b / (1 - F) with the model being trained, takes the reference's embeddings from --ref (each sample's
    from its shard's score file, as it is decoded; a sample without an ok one is skipped), keeps b
    with JEST, and trains on them; metrics.jsonl logs the learnability (mean over the b x b pairs) of the
    chosen vs a random batch and the time spent scoring vs training; batches.parquet names what was chosen.

    Flexi-JEST (ViT image towers): --score-resolution R has the learner score each super-batch at R px
    (fewer image tokens, position embeddings interpolated); --multi-resolution R trains a random half of
    every batch at R and the rest at full size, in one SigLIP loss. Evaluation stays at full size, and the
    FLOPs in metrics.jsonl count each part at its own size.

    \b
    example: curate train data/curated -o runs/reference --steps 600 --eval data/eval
             curate train data/web -o runs/jest --manifest manifests/jest --steps 600
             curate train data/web -o runs/jest --online-jest --ref scores/ --ratio 0.8
             curate train data/web -o runs/flexi --online-jest --ref scores/ --score-resolution 16 \\
                 --multi-resolution 16
    """
    from curate.errors import CurateError
    from curate.fileio import absolute, basename
    from curate.train import DataConfig, OnlineJestConfig, OptimConfig, TrainConfig, train

    # Inputs are recorded absolute (URLs as given), so config.json says what the run read from anywhere.
    online = None
    if online_jest:
        ref = absolute(ref) if ref else None
        online = OnlineJestConfig(
            ref, ratio, chunks, criterion, temperature, score_resolution, false_negatives, online_scope
        )
    elif score_resolution is not None or false_negatives is not None:
        option = "--score-resolution" if score_resolution is not None else "--false-negatives"
        raise CurateError(f"{option} needs --online-jest (only online JEST scores super-batches)")
    config = TrainConfig(
        data=DataConfig(
            paths=tuple(absolute(path) for path in data),
            manifest=absolute(manifest) if manifest else None,
            order=order,
            cache=cache,
            shuffle_buffer=shuffle_buffer,
            workers=workers,
            allow_missing=allow_missing,
        ),
        out=output,
        model=model,
        pretrained=pretrained,
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        optim=OptimConfig(lr=lr, warmup=warmup, wd=wd, beta2=beta2, grad_clip=grad_clip),
        online=online,
        multi_resolution=multi_resolution,
        eval=eval_set,
        eval_every=eval_every,
        save_every=save_every,
        log_every=log_every,
        device=device,
        precision=precision,
        resume=resume,
        collective_timeout=collective_timeout,
        command=command_line(),
    )

    # The run named in the bar tells parallel runs apart (make -j, one log).
    def warn(message: str) -> None:
        err.print(f"warning: {message}")

    with progress_bar(f"train {basename(output)}", unit="steps") as progress:
        summary = train(config, progress, warn)  # under torchrun, only rank 0's progress and warnings
    if summary.rank != 0:
        return  # rank 0 reports for the job
    if summary.start_step == summary.steps:  # a --resume of a finished run (make re-running a pipeline)
        out.print(f"already trained to step {summary.steps}: nothing left to train → {summary.run}/latest.pt")
        return
    for shard, why in summary.damaged.items():
        warn(f"{shard} is damaged ({why}); trained without the samples it did not hold")
    if summary.trimmed:
        warn(
            f"{summary.trimmed} samples of short manifest batches were left out so that each batch splits "
            f"evenly over the {summary.world_size} processes"
        )
    if summary.missing_from_manifest:
        warn(
            f"{summary.missing_from_manifest} manifest samples were not in the data or could not be "
            "decoded; their batches trained without them"
        )
    data_line = f"{summary.data_samples} samples in memory" if summary.data_samples else "streamed"
    if summary.manifest_keys is not None:
        data_line += f" ({summary.manifest_keys_found} of the manifest's {summary.manifest_keys} keys found)"
    skipped = ""
    if summary.skipped:  # no_reference_score among them: samples online JEST could not score
        reasons = ", ".join(f"{reason} {n}" for reason, n in summary.skipped.items())
        skipped = f", {sum(summary.skipped.values())} skipped ({reasons})"
    final_eval = ""
    if summary.evals:
        last = summary.evals[-1]["eval"]
        final_eval = "; eval " + ", ".join(f"{k} {v:.3f}" for k, v in last.items() if isinstance(v, float))
    speed = f"{summary.samples_per_second:.0f} samples/s"
    if summary.world_size > 1:
        speed += f" over {summary.world_size} processes"
    out.print(
        f"trained steps {summary.start_step}→{summary.steps} on {data_line}{skipped}: final loss "
        f"{summary.final_loss:.4f}, {speed}{final_eval} → {summary.run}/latest.pt"
    )
