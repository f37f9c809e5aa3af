"""Throughput of `curate score` at the model's own resolution and at `--resolution R`: one model, one process.

    python bench/score_resolution.py                  # siglip-small 64 -> 32 px on synthetic data, CPU
    python bench/score_resolution.py --model ViT-B-16-SigLIP --resolution 112 --device cuda --n 20000

Each run is the real `score_shards`, end to end (tars read, decoded and resized in DataLoader workers,
tokenized, embedded, Parquet written), timed from the call to its return. The two resolutions alternate
(full, low, full, low, ...) so drift in a shared machine's load falls on both alike; the table reports each
one's median samples/s over the runs with its min-max spread, and their ratio. Beside it: FLOPs per sample
(the image tower's, and both towers' as the score files count them) and the rate of the model's forward pass
alone on pre-decoded tensors, so the ratio can be read against what the model could give: only the image
tower gets fewer tokens, while the text tower, JPEG decoding and tokenizing cost the same at any resolution.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from score_throughput import model_only_rate, synthetic_crawl  # noqa: E402  (bench/ is the script's folder: on sys.path)

from curate.models import ImageTextModel, load_model  # noqa: E402
from curate.runtime import resolve_device, resolve_precision  # noqa: E402
from curate.score import ScoreConfig, score_shards  # noqa: E402


def end_to_end_rate(shards: str, out: str, config: ScoreConfig, model: ImageTextModel) -> float:
    start = time.perf_counter()
    summary = score_shards(shards, out, config, model=model)
    return summary.samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="siglip-small")
    parser.add_argument("--pretrained", default=None)
    parser.add_argument(
        "--resolution", type=int, default=None, help="low resolution (default: half the side)"
    )
    parser.add_argument("--n", type=int, default=2048, help="synthetic samples to score per run")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader decode workers")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--runs", type=int, default=3, help="runs of each resolution (median reported)")
    args = parser.parse_args()

    device = resolve_device(args.device)
    precision = resolve_precision("auto", device)
    model = load_model(args.model, args.pretrained, device, allow_random_init=args.pretrained is None)
    full = model.image_size
    low = model.check_resolution(args.resolution or full // 2)
    patch = model.patch_size
    rates: dict[int, list[float]] = {full: [], low: []}
    with tempfile.TemporaryDirectory() as scratch:
        data = f"{scratch}/data"
        # at the model's own size: the low-resolution run downsizes, never upsizes
        synthetic_crawl(data, args.n, full, samples_per_shard=512)
        configs = {
            size: ScoreConfig(
                model=args.model,
                pretrained=args.pretrained,
                batch_size=args.batch_size,
                device=str(device),
                workers=args.workers,
                overwrite=True,
                allow_random_init=True,
                resolution=size,
            )  # fmt: skip
            for size in (full, low)
        }
        for size in (full, low):  # warm-up: first-call allocations, FLOP counts, position-grid cache
            end_to_end_rate(f"{data}/web/00000.tar", f"{scratch}/warmup-{size}", configs[size], model)
        for _ in range(args.runs):
            for size in (full, low):
                rates[size].append(end_to_end_rate(f"{data}/web", f"{scratch}/{size}", configs[size], model))
        forward = {
            size: model_only_rate(model, f"{data}/web/00000.tar", args.batch_size, device, precision, size)
            for size in (full, low)
        }

    threads = torch.get_num_threads()
    load = os.getloadavg()[0]
    print(f"{args.model} on {device.type} ({precision}), batch {args.batch_size}, {args.n} samples, "
          f"{args.workers} decode workers, {threads} torch threads, {args.runs} alternating runs each, "
          f"1-min load {load:.1f} on {os.cpu_count()} cores")  # fmt: skip
    image = {size: model.image_flops(size) for size in (full, low)}
    header = f"{'resolution':<12}{'tokens':>8}{'image GFLOPs':>14}{'both GFLOPs':>13}{'forward only/s':>16}"
    print(f"{header}{'curate score/s (median)':>25}{'min-max':>12}")
    for size in (full, low):
        tokens = (size // patch) ** 2 + 1  # the grid and the class token
        median = statistics.median(rates[size])
        spread = f"{min(rates[size]):.0f}-{max(rates[size]):.0f}"
        both = model.forward_flops(size)
        print(f"{f'{size} px':<12}{tokens:>8}{image[size] / 1e9:>14.3f}{both / 1e9:>13.3f}"
              f"{forward[size]:>16.0f}{median:>25.0f}{spread:>12}")  # fmt: skip
    ratio = statistics.median(rates[low]) / statistics.median(rates[full])
    # Fewer tokens and FLOPs, more samples/s: each column's gain at the low resolution.
    print(f"{'gain':<12}{(full // patch) ** 2 / (low // patch) ** 2:>7.1f}×"
          f"{image[full] / image[low]:>13.2f}×{model.forward_flops(full) / model.forward_flops(low):>12.2f}×"
          f"{forward[low] / forward[full]:>15.2f}×{ratio:>24.2f}×")  # fmt: skip


if __name__ == "__main__":
    main()
