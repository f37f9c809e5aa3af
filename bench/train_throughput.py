"""`curate train` against open_clip's own trainer, and the per-step cost of online JEST.

    python bench/train_throughput.py                  # siglip-tiny, batch 64, 40 steps, CPU
    python bench/train_throughput.py --steps 200 --batch-size 256 --device cuda

Both trainers run in this process on the same synthetic shards (img2dataset layout), model config,
batch size, precision and torch threads. Each is timed end to end twice, for --steps and for a quarter
of them; the rate is the extra samples over the extra seconds, so start-up (model creation, filling
shuffle buffers, decoding the cache) cancels out and what is left is the steady-state step. open_clip's
trainer is `open_clip_train.main`, with the built-in config registered first, SigLIP loss, webdataset.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402

from curate.models import BUILTINS  # noqa: E402
from curate.models.builtin import register_builtins  # noqa: E402
from curate.score import ScoreConfig, score_shards  # noqa: E402
from curate.synth import NoiseRates, SynthConfig, synthesize  # noqa: E402
from curate.train import DataConfig, OnlineJestConfig, OptimConfig, TrainConfig, train  # noqa: E402


def steady_rate(run, steps: int, batch_size: int) -> float:
    """Samples per second of the steps beyond a short run: (long - short) samples / (long - short) seconds."""
    short = max(1, steps // 4)
    times = {}
    for count in (short, steps):
        start = time.perf_counter()
        run(count)
        times[count] = time.perf_counter() - start
    return (steps - short) * batch_size / (times[steps] - times[short])


def open_clip_run(shards: str, count: int, args, logs: str, steps: int) -> None:
    import open_clip_train.data
    from open_clip_train.main import main as open_clip_main
    from webdataset.tariterators import tar_file_expander

    # open_clip_train 3.3.0 predates webdataset's end-of-shard marker (an empty dict) and fails on it with
    # KeyError 'fname', whatever the shards hold; turn the marker off for its pipeline.
    open_clip_train.data.tar_file_expander = lambda *a, **k: tar_file_expander(*a, **k, eof_value=None)

    register_builtins()
    argv = [
        "--train-data", f"{shards}/{{00000..{count - 1:05d}}}.tar", "--dataset-type", "webdataset",
        "--train-num-samples", str(steps * args.batch_size), "--epochs", "1",
        "--model", BUILTINS[args.model].open_clip_name, "--siglip", "--batch-size", str(args.batch_size),
        "--workers", str(args.workers), "--precision", "fp32" if args.device == "cpu" else "amp_bf16",
        "--lr", "1e-3", "--warmup", "5", "--wd", "0.1", "--beta2", "0.95", "--grad-clip-norm", "1.0",
        "--save-frequency", "0", "--logs", logs, "--report-to", "", "--log-every-n-steps", "1000",
        "--device", args.device, "--seed", "0", "--name", f"steps{steps}",
    ]  # fmt: skip
    open_clip_main(argv)


def curate_run(shards: str, args, out: str, steps: int, cache: str, ref: str | None = None) -> None:
    config = TrainConfig(
        DataConfig((shards,), cache=cache, workers=args.workers), f"{out}-{steps}", model=args.model,
        steps=steps, batch_size=args.batch_size, optim=OptimConfig(lr=1e-3, warmup=5), device=args.device,
        log_every=1000, online=OnlineJestConfig(ref=ref) if ref else None,
    )  # fmt: skip
    train(config)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="siglip-tiny", choices=sorted(BUILTINS))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        n = args.steps * args.batch_size * 5  # enough for one epoch of online JEST super-batches at F = 0.8
        config = SynthConfig(
            n=n, seed=0, noise=NoiseRates(corrupt=0.0), samples_per_shard=1000, eval_per_class=1
        )
        synthesize(config, f"{scratch}/data")
        shards = f"{scratch}/data/web"
        count = -(-n // 1000)
        score_shards(
            shards, f"{scratch}/scores", ScoreConfig(model=args.model, allow_random_init=True, workers=0)
        )
        runs = {
            "open_clip_train (webdataset stream)": lambda s: open_clip_run(
                shards, count, args, f"{scratch}/oc", s
            ),
            "curate train --cache stream": lambda s: curate_run(
                shards, args, f"{scratch}/stream", s, cache="stream"
            ),
            "curate train --cache memory": lambda s: curate_run(
                shards, args, f"{scratch}/memory", s, cache="memory"
            ),
            "curate train --online-jest F=0.8 (memory)": lambda s: curate_run(
                shards, args, f"{scratch}/jest", s, cache="memory", ref=f"{scratch}/scores"
            ),
        }
        rates = {name: steady_rate(run, args.steps, args.batch_size) for name, run in runs.items()}

    print(f"{args.model}, batch {args.batch_size}, {args.steps} steps, {args.device}, "
          f"{torch.get_num_threads()} torch threads, {args.workers} loader workers")  # fmt: skip
    baseline = rates["open_clip_train (webdataset stream)"]
    plain = rates["curate train --cache memory"]
    print(f"{'trainer':<44}{'samples/s':>10}{'vs open_clip':>14}")
    for name, rate in rates.items():
        print(f"{name:<44}{rate:>10.1f}{rate / baseline:>13.2f}×")
    print(f"online JEST step cost vs a plain step (same b): {plain / rates[list(rates)[-1]]:.2f}×")


if __name__ == "__main__":
    main()
