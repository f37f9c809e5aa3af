"""`curate train` against open_clip's own trainer, and the per-step cost of online JEST.

    OMP_NUM_THREADS=1 python bench/train_throughput.py --runs 3   # siglip-tiny, batch 64, 40 steps, CPU
    python bench/train_throughput.py --steps 200 --batch-size 256 --device cuda

Every trainer runs in this process on the same synthetic shards (img2dataset layout), model config,
batch size, precision and torch threads. Each is timed end to end twice, for --steps and for a quarter
of them; the rate is the extra samples over the extra seconds, so start-up (model creation, filling
shuffle buffers, decoding the cache) cancels out and what is left is the steady-state step. open_clip's
trainer is `open_clip_train.main`, with the built-in config registered first, SigLIP loss, webdataset.

A shared machine's load drifts, so the trainers take turns: --runs rounds, each timing every trainer once
in the same order, and the table gives each one's median rate with its spread (min-max), and its median
ratio to open_clip's rate of the same round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from functools import partial

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


def open_clip_run(shards: str, count: int, args, logs: str, steps: int, name: str) -> None:
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
        "--device", args.device, "--seed", "0", "--name", f"{name}-steps{steps}",
    ]  # fmt: skip
    open_clip_main(argv)


def curate_run(shards: str, args, out: str, steps: int, cache: str, ref: str | None = None) -> None:
    config = TrainConfig(
        DataConfig((shards,), cache=cache, workers=args.workers, shuffle_buffer=args.shuffle_buffer),
        f"{out}-{steps}", model=args.model,
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
    parser.add_argument("--runs", type=int, default=3, help="rounds of alternating runs (median, spread)")
    parser.add_argument("--shuffle-buffer", type=int, default=5000, help="samples (open_clip's default)")
    parser.add_argument("--online", action="store_true", help="time online JEST (memory, stream) too")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        # Two epochs of b-sample batches (open_clip's epoch must not run out of shards), or with --online
        # one epoch of super-batches at F = 0.8; no more, as the memory cache decodes all of it every run.
        n = args.steps * args.batch_size * (5 if args.online else 2)
        config = SynthConfig(
            n=n, seed=0, noise=NoiseRates(corrupt=0.0), samples_per_shard=1000, eval_per_class=1
        )
        synthesize(config, f"{scratch}/data")
        shards = f"{scratch}/data/web"
        count = -(-n // 1000)
        scores = f"{scratch}/scores"
        if args.online:
            score_shards(shards, scores, ScoreConfig(model=args.model, allow_random_init=True, workers=0))
        runs = {
            OPEN_CLIP: lambda s, r: open_clip_run(shards, count, args, f"{scratch}/oc", s, f"r{r}"),
            "curate train --cache stream": lambda s, r: curate_run(
                shards, args, f"{scratch}/stream{r}", s, cache="stream"
            ),
            "curate train --cache memory": lambda s, r: curate_run(
                shards, args, f"{scratch}/memory{r}", s, cache="memory"
            ),
        }
        if args.online:
            runs[JEST_MEMORY] = lambda s, r: curate_run(
                shards, args, f"{scratch}/jest{r}", s, cache="memory", ref=scores
            )
            runs["curate train --online-jest F=0.8 (stream)"] = lambda s, r: curate_run(
                shards, args, f"{scratch}/jest-stream{r}", s, cache="stream", ref=scores
            )
        rates: dict[str, list[float]] = {name: [] for name in runs}
        for round_ in range(args.runs):  # alternating: each round times every trainer once
            for name, run in runs.items():
                rate = steady_rate(partial(run, r=round_), args.steps, args.batch_size)
                rates[name].append(rate)
                print(f"round {round_ + 1}/{args.runs}: {name}: {rate:.1f} samples/s", flush=True)

    print(f"{args.model}, batch {args.batch_size}, {args.steps} steps, {args.device}, "
          f"{torch.get_num_threads()} torch threads, {args.workers} loader workers, {args.runs} rounds, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    baseline = rates[OPEN_CLIP]
    print(f"{'trainer':<44}{'median':>9}{'min-max':>16}{'vs open_clip':>14}{'min-max':>14}")
    for name, rate in rates.items():
        ratios = [r / b for r, b in zip(rate, baseline, strict=True)]  # paired by round: same load
        print(
            f"{name:<44}{statistics.median(rate):>9.1f}{f'{min(rate):.0f}-{max(rate):.0f}':>16}"
            f"{statistics.median(ratios):>13.2f}×{f'{min(ratios):.2f}-{max(ratios):.2f}':>14}"
        )
    if args.online:
        plain = statistics.median(rates["curate train --cache memory"])
        jest = statistics.median(rates[JEST_MEMORY])
        print(f"online JEST step cost vs a plain step (same b): {plain / jest:.2f}×")


OPEN_CLIP = "open_clip_train (webdataset stream)"
JEST_MEMORY = "curate train --online-jest F=0.8 (memory)"


if __name__ == "__main__":
    main()
