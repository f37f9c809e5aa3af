"""Seconds per training step: plain, online JEST, and online JEST with Flexi-JEST's low resolutions.

    python bench/online_jest_step.py                     # siglip-tiny 32 px → 16, b = 64, F = 0.8, CPU fp32
    python bench/online_jest_step.py --model siglip-small --resolution 32
    python bench/online_jest_step.py --model ViT-B-16 --resolution 112 --device cuda --batch-size 256

One process, one model, one in-memory data set (synthetic shards decoded once, as `--cache memory` does).
Every variant runs the trainer's own code: `curate.train.loop.train_step` for the update, after
`curate.train.online.choose` on the super-batch B = b / (1 - F) for online JEST, from the same copy of a
batch to the device. The reference's embeddings are random unit vectors: looking them up costs the same
as real ones, and the trainer never computes them. Variants alternate run by run, so a busy neighbour
slows all of them alike; each run times --steps steps (after a sync), and the table gives the median
seconds per step over --runs runs, their spread (min–max), the ratio to the plain step, and the ratio
FLOPs predict, as metrics.jsonl counts them (`flops_per_step` over `ImageTextModel.forward_flops`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from open_clip.loss import SigLipLoss  # noqa: E402

from curate.jest import PairEmbeddings  # noqa: E402
from curate.models import ImageTextModel, load_model  # noqa: E402
from curate.runtime import resolve_device, resolve_precision  # noqa: E402
from curate.shards.paths import expand_shards  # noqa: E402
from curate.synth import NoiseRates, SynthConfig, synthesize  # noqa: E402
from curate.train import DataConfig, OnlineJestConfig, OptimConfig, TrainConfig  # noqa: E402
from curate.train.batch import Batch  # noqa: E402
from curate.train.cache import decode  # noqa: E402
from curate.train.data import EpochOrder  # noqa: E402
from curate.train.loop import _optimizer, flops_per_step, train_step  # noqa: E402
from curate.train.online import choose  # noqa: E402


def random_reference(n: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, D) float16 image and text embeddings of a made-up reference, one row per cached sample."""
    generator = torch.Generator().manual_seed(0)
    image, text = (F.normalize(torch.randn(n, dim, generator=generator), dim=-1) for _ in "it")
    return image.half(), text.half()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="siglip-tiny", help="built-in or open_clip name (random init)")
    parser.add_argument("--resolution", type=int, default=None, help="R px (default: half the side)")
    parser.add_argument("--batch-size", type=int, default=64, help="b, the pairs trained per step")
    parser.add_argument("--ratio", type=float, default=0.8, help="F: online JEST scores B = b / (1 - F)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per variant (median over them)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", help="auto: bf16 on CUDA, fp32 on a CPU")
    parser.add_argument(
        "--no-multi-resolution", action="store_true", help="leave out the --multi-resolution rows"
    )
    args = parser.parse_args()

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    model = load_model(args.model, None, device, allow_random_init=True)
    resolution = args.resolution or model.image_size // 2
    model.check_resolution(resolution)
    b = args.batch_size

    with tempfile.TemporaryDirectory() as scratch:
        # Two super-batches' worth of samples: steps cycle through them epoch by epoch, as the trainer does.
        n = 2 * round(b / (1 - args.ratio))
        synth = SynthConfig(n=n, seed=0, noise=NoiseRates(corrupt=0.0), samples_per_shard=n, eval_per_class=1)
        synthesize(synth, f"{scratch}/data", workers=1)
        paths = expand_shards([f"{scratch}/data/web"])
        rows, _ = decode(paths, model.preprocess, model.tokenizer, None, 0, None, None, lambda batch: None)
        order = EpochOrder(len(rows), seed=0)  # the trainer's uniform order over the memory cache

        def config(score: int | None = None, multi: int | None = None, online: bool = True) -> TrainConfig:
            jest = (
                OnlineJestConfig(ref="(random)", ratio=args.ratio, score_resolution=score) if online else None
            )
            return TrainConfig(
                DataConfig((f"{scratch}/data/web",)), "(not written)", model=args.model, batch_size=b,
                optim=OptimConfig(lr=1e-4, warmup=0), online=jest, multi_resolution=multi,
            )  # fmt: skip

        variants = {
            "plain step": config(online=False),
            "online JEST, scored at full size": config(),
            f"online JEST, scored at {resolution} px": config(score=resolution),
        }
        if not args.no_multi_resolution:
            variants[f"plain, half trained at {resolution} px"] = config(multi=resolution, online=False)
            variants[f"online JEST at {resolution} px + multi-res"] = config(
                score=resolution, multi=resolution
            )

        flops = {name: flops_per_step(model, v) for name, v in variants.items()}
        rows.reference = random_reference(len(rows), model.embed_dim)  # travels with each batch
        optimizer = _optimizer(model, OptimConfig())
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        loss_fn = SigLipLoss()
        counter = {"step": 0}

        def step(settings: TrainConfig) -> torch.Tensor:
            number = counter["step"]
            counter["step"] += 1
            size = settings.super_batch
            drawn = rows.take(order.rows(order.positions(number, size, slice(0, size))))
            batch = Batch(drawn.images, drawn.tokens, drawn.keys, drawn.reference).to(device)  # the one copy
            images, tokens = batch.images, batch.tokens
            if settings.online is not None:
                generator = torch.Generator(device=device).manual_seed(number)
                reference = PairEmbeddings(*batch.reference, 10.0, -10.0)
                choice = choose(model, reference, batch, settings.online, generator, precision)
                chosen = choice.selection.indices
                images, tokens = images[chosen], tokens[chosen]
            forward = model.training_forward()
            return train_step(
                forward, optimizer, scaler, loss_fn, images, tokens, settings, number, precision
            )

        def timed(settings: TrainConfig, steps: int) -> float:
            started = time.perf_counter()
            for _ in range(steps):
                loss = step(settings)
            float(loss)  # one sync: on a GPU the steps were only queued
            return (time.perf_counter() - started) / steps

        for settings in variants.values():  # warm-up: allocator, interpolated grids, autotuning
            timed(settings, 2)
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.runs):
            for name, settings in variants.items():
                seconds[name].append(timed(settings, args.steps))

    report(args, model, resolution, flops, seconds, device, precision)


def report(
    args: argparse.Namespace,
    model: ImageTextModel,
    resolution: int,
    flops: dict[str, float],
    seconds: dict[str, list[float]],
    device: torch.device,
    precision: str,
) -> None:
    b, big = args.batch_size, round(args.batch_size / (1 - args.ratio))
    print(
        f"{args.model} ({model.image_size} px, low resolution {resolution} px), b = {b}, F = {args.ratio} "
        f"(B = {big}), {device} {precision}, {torch.get_num_threads()} torch threads; median of "
        f"{args.runs} runs x {args.steps} steps, variants alternating"
    )
    plain_seconds = statistics.median(seconds["plain step"])
    plain = flops["plain step"]
    print("| variant | s/step (median) | min–max | × plain | × plain, FLOPs |\n|---|---|---|---|---|")
    for name, times in seconds.items():
        median = statistics.median(times)
        print(
            f"| {name} | {median:.3f} | {min(times):.3f}–{max(times):.3f} | {median / plain_seconds:.2f}× "
            f"| {flops[name] / plain:.2f}× |"
        )
    # With ρ = F(R) / F(full) per sample (both towers): scoring costs B·ρ against a plain step's 3b, so
    # ≤ 1.4× needs ρ ≤ 1.2·b/B; training half at R too makes it 0.5 + ρ·(0.5 + B/3b).
    rho = model.forward_flops(resolution) / model.forward_flops()
    print(
        f"F({resolution})/F({model.image_size}) = {rho:.2f} per sample (both towers: the text tower does not "
        f"shrink); a FLOPs ratio ≤ 1.4× needs ≤ {1.2 * b / big:.2f} when only scoring at low resolution, "
        f"≤ {0.9 / (0.5 + big / (3 * b)):.2f} with --multi-resolution too"
    )


if __name__ == "__main__":
    main()
