"""Throughput of `curate score` against the model's forward pass alone, same model, batch and process.

    python bench/score_throughput.py                       # siglip-small on synthetic 64 px data, CPU
    python bench/score_throughput.py --model ViT-B-16-SigLIP --pretrained webli --device cuda --n 20000

The whole path reads tars, decodes and preprocesses in DataLoader workers, tokenizes, embeds and writes
Parquet; the model-only rate runs the same forward passes on tensors decoded beforehand. Their ratio
says how much of the decoding is hidden behind compute (target: >= 0.8).
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from curate.models import load_model  # noqa: E402
from curate.runtime import autocast, resolve_device, resolve_precision  # noqa: E402
from curate.score import ScoreConfig, score_shards  # noqa: E402
from curate.shards import ReadStats, iter_samples  # noqa: E402
from curate.synth import SynthConfig, synthesize  # noqa: E402


def synthetic_crawl(folder: str, n: int, image_size: int, samples_per_shard: int) -> None:
    """A clean synthetic crawl of `n` pairs at `image_size` px to score, rendered on every core: on 2
    processes, 224 px images take longer to render than to score."""
    config = SynthConfig(
        n=n, seed=0, image_size=image_size, samples_per_shard=samples_per_shard, curated_fraction=0,
        eval_per_class=1,
    )  # fmt: skip
    synthesize(config, folder, workers=os.cpu_count() or 1)


def model_only_rate(
    model, shards: str, batch_size: int, device, precision: str, resolution: int | None = None
) -> float:
    """Samples/s of both towers alone on `shards` decoded beforehand (at `resolution`, if given)."""
    preprocess = model.preprocess if resolution is None else model.preprocess_at(resolution)
    samples = list(iter_samples(shards, ReadStats()))
    images = torch.stack([preprocess(Image.open(io.BytesIO(s.image)).convert("RGB")) for s in samples])
    tokens = model.tokenizer([s.caption for s in samples])
    batches = [
        (images[i : i + batch_size], tokens[i : i + batch_size]) for i in range(0, len(samples), batch_size)
    ]
    with torch.no_grad(), autocast(precision, device):
        model.encode(batches[0][0].to(device), batches[0][1].to(device), resolution)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for image_batch, token_batch in batches:
            model.encode(image_batch.to(device), token_batch.to(device), resolution)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return len(samples) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="siglip-small")
    parser.add_argument("--pretrained", default=None)
    parser.add_argument("--n", type=int, default=4096, help="synthetic samples to score")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    precision = resolve_precision("auto", device)
    model = load_model(args.model, args.pretrained, device, allow_random_init=args.pretrained is None)
    with tempfile.TemporaryDirectory() as scratch:
        data = f"{scratch}/data"
        synthetic_crawl(data, args.n, model.image_size, samples_per_shard=1024)
        config = ScoreConfig(
            model=args.model, pretrained=args.pretrained, batch_size=args.batch_size, device=str(device),
            workers=args.workers, overwrite=True, allow_random_init=True,
        )  # fmt: skip
        score_shards(f"{data}/web/00000.tar", f"{scratch}/warmup", config, model=model)  # warm-up
        forward = model_only_rate(model, f"{data}/web", args.batch_size, device, precision)
        summary = score_shards(f"{data}/web", f"{scratch}/scores", config, model=model)
        whole = summary.samples_per_second

    threads = torch.get_num_threads()
    print(f"{args.model} on {device.type} ({precision}), batch {args.batch_size}, {args.n} samples, "
          f"{args.workers} decode workers, {threads} torch threads")  # fmt: skip
    print(f"{'path':<34}{'samples/s':>12}")
    print(f"{'model forward only (pre-decoded)':<34}{forward:>12.1f}")
    print(f"{'curate score (tar → parquet)':<34}{whole:>12.1f}")
    print(f"{'ratio':<34}{whole / forward:>12.2f}")


if __name__ == "__main__":
    main()
