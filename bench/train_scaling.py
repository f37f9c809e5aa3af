"""`curate train` on W processes against one: plain training, and online JEST's global and local scopes.

    python bench/train_scaling.py                # siglip-tiny, b = 64, 12 steps, W = 2 vs 1, CPU, 3 rounds
    python bench/train_scaling.py --ceiling      # also 2 one-process runs of b / 2 at once, side by side
    python bench/train_scaling.py --device auto --model ViT-B-16 --precision bf16 --batch-size 256 \
        --steps 30 --runs 2 --image-size 224     # one rank per GPU, every GPU against one

Every run is the real command in a fresh subprocess, on one synthetic crawl (`curate synth`, --n pairs) and
one set of reference scores (`curate score` with --ref-model, random weights), both made once in a temporary
folder: W = 1 as `python -m curate train ...`, W > 1 as `python -m torch.distributed.run --standalone
--nproc-per-node W -m curate train ...`, with --batch-size the global batch (each rank trains b / W) and the
data in memory (--cache memory). On a CPU each rank has one torch thread (OMP_NUM_THREADS, --threads), so W
ranks use W cores; with --device auto each rank takes its own GPU and W defaults to every GPU there is.

The rate is steady-state, read from rank 0's RUN/metrics.jsonl: of the log lines (every --log-every steps),
take the first at or after step --skip x --steps and the last; samples/s = (step_last - step_first) x b /
(seconds_last - seconds_first). Start-up (imports, joining the process group, decoding the memory cache,
the first steps' allocations) is left out, and a log line's `seconds` is taken after the loss's all-reduce,
so each interval holds whole steps of every rank. The exchange's share of an online global step is the mean
of `time_share["exchange"]` over the log windows of that interval (rank 0's clock: gathering the super-batch's
embeddings and keys, moving the chosen pairs; on CUDA these are launch times bounded by each log step's
sync).

A shared machine's load drifts, so the runs take turns: --runs rounds, each running every row once in the
same order. The table gives each row's median samples/s with its spread (min-max) and, for W > 1, the median
ratio to the W = 1 run of the same round. With one process the two online scopes are one computation, so
online JEST at W = 1 runs once per round and is the baseline of both. Below the table: the step time of
online global over online local at W (median of the rounds' ratios), and the exchange's share. --ceiling
adds W one-process runs of b / W side by side (no communication, one GPU each with --device auto): what the
machine itself allows W processes, e.g. two cores sharing caches and memory bandwidth.

The defaults took 9.4 minutes on an idle 2-core machine (15 runs of 26-47 s, 33 s for the data and the
scores). Much of it is start-up: each run imports torch and open_clip afresh, decodes the memory cache and
tears down, about 16 s a run whatever --steps, and an online JEST step at F = 0.8 scores B = 320 pairs
(about 2.4 s at W = 1); hence 12 steps, the rate over the last 9.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

PLAIN, ONLINE, GLOBAL, LOCAL = "plain", "online JEST", "online JEST, global", "online JEST, local"
CEILING = "plain, side by side"  # --ceiling: W one-process runs of b / W at once, no communication


@dataclass(frozen=True)
class Row:
    name: str  # the table's row: variant and process count
    variant: str  # PLAIN, ONLINE (W = 1: either scope), GLOBAL, LOCAL or CEILING
    processes: int


@dataclass(frozen=True)
class Measure:
    rate: float  # samples/s, steady state
    exchange: float | None  # mean time_share["exchange"] over the steady-state log lines
    seconds: float  # the subprocess's wall time


def command(args: argparse.Namespace, row: Row, data: str, scores: str, out: str, batch: int) -> list[str]:
    if row.processes == 1 or row.variant == CEILING:
        launcher = [sys.executable, "-m", "curate"]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        launcher += ["--nproc-per-node", str(row.processes), "-m", "curate"]
    argv = launcher + [
        "train", data, "-o", out, "--model", args.model, "--steps", str(args.steps),
        "--batch-size", str(batch), "--warmup", "5", "--log-every", str(args.log_every),
        "--save-every", "0", "--cache", "memory", "--workers", str(args.workers), "--device", args.device,
        "--precision", args.precision, "--seed", "0",
    ]  # fmt: skip
    if row.variant in (ONLINE, GLOBAL, LOCAL):
        argv += ["--online-jest", "--ref", scores, "--ratio", str(args.ratio), "--chunks", str(args.chunks)]
        argv += ["--online-scope", "local" if row.variant == LOCAL else "global"]
    return argv


LIVE: list[subprocess.Popen] = []  # the commands running now: ended with this script


def start(argv: list[str], env: dict[str, str], log: str) -> tuple[subprocess.Popen, list[str], str, float]:
    with open(log, "w") as out:  # the child holds its own copy of the file
        # A session of its own: the terminal's Ctrl-C reaches this script only, which ends the runs itself.
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    LIVE.append(process)
    return process, argv, log, time.perf_counter()


def end(process: subprocess.Popen) -> None:
    """SIGTERM first: torchrun passes it on to its ranks (each in a session of its own), then waits for
    them; SIGKILL to what is left after 30 s."""
    for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    if process in LIVE:
        LIVE.remove(process)


def interrupted(number: int, frame: object) -> None:
    for process in list(LIVE):
        end(process)
    sys.exit(f"stopped by {signal.Signals(number).name}: ended the runs in progress")


def finish(started: tuple[subprocess.Popen, list[str], str, float], timeout: float) -> float:
    """Wait for a started command (its output in its log); on failure or timeout exit with the tail of its
    output. Its wall time in seconds."""
    process, argv, log, since = started
    try:
        code = process.wait(timeout=max(1.0, since + timeout - time.perf_counter()))
        LIVE.remove(process)
    except subprocess.TimeoutExpired:
        end(process)
        code = None
    if code != 0:
        for other in list(LIVE):  # side-by-side runs started with it
            end(other)
        with open(log) as out:
            tail = out.read()[-4000:]
        what = f"ran past {timeout:.0f} s" if code is None else f"failed (exit {code})"
        sys.exit(f"{' '.join(argv)}\n{what}; the end of its output:\n{tail}")
    return time.perf_counter() - since


def run(argv: list[str], env: dict[str, str], log: str, timeout: float) -> float:
    return finish(start(argv, env, log), timeout)


def steady_state(metrics: str, args: argparse.Namespace, batch: int) -> tuple[float, float | None]:
    """(samples/s, mean exchange share) between the first log line at or after --skip of the steps and
    the last one."""
    with open(metrics) as lines:
        records = [record for record in map(json.loads, lines) if "loss" in record]
    first_step = math.ceil(args.skip * args.steps)
    kept = [record for record in records if record["step"] >= first_step]
    if len(kept) < 2:
        sys.exit(
            f"{metrics}: {len(kept)} log line(s) at or after step {first_step}: raise --steps or lower "
            "--log-every or --skip"
        )
    first, last = kept[0], kept[-1]
    rate = (last["step"] - first["step"]) * batch / (last["seconds"] - first["seconds"])
    shares = [record["time_share"].get("exchange", 0.0) for record in kept[1:] if "time_share" in record]
    return rate, statistics.fmean(shares) if shares else None


def spread(values: list[float], digits: int) -> str:
    return f"{min(values):.{digits}f}–{max(values):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="siglip-tiny", help="built-in or open_clip name (random init)")
    parser.add_argument("--batch-size", type=int, default=64, help="b, the global batch")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--log-every", type=int, default=3, help="steps per metrics.jsonl line")
    parser.add_argument("--skip", type=float, default=0.25, help="share of the steps left out as warm-up")
    parser.add_argument("--runs", type=int, default=3, help="rounds of alternating runs (median, spread)")
    parser.add_argument("--device", default="cpu", help="cpu, or auto: one GPU per rank")
    parser.add_argument("--precision", default="auto", help="auto: bf16 autocast on CUDA, fp32 on a CPU")
    parser.add_argument("--processes", type=int, default=None, help="W (default: 2 on a CPU, every GPU)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank (OMP_NUM_THREADS)")
    parser.add_argument("--workers", type=int, default=1, help="loader processes per rank (decoding only)")
    parser.add_argument("--ratio", type=float, default=0.8, help="online JEST's F: B = b / (1 - F)")
    parser.add_argument("--chunks", type=int, default=16, help="online JEST's N (the CLI's default)")
    parser.add_argument("--n", type=int, default=2000, help="pairs in the synthetic crawl")
    parser.add_argument("--image-size", type=int, default=32, help="pixels of the synthetic images")
    parser.add_argument("--ref-model", default="siglip-tiny", help="scores the reference (random init)")
    parser.add_argument("--no-online", action="store_true", help="plain training only")
    parser.add_argument(
        "--ceiling", action="store_true", help="also W one-process runs of b / W at once: no communication"
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds one run may take")
    args = parser.parse_args()
    for number in (signal.SIGINT, signal.SIGTERM):  # `timeout` sends SIGTERM
        signal.signal(number, interrupted)

    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    if args.processes is None:
        gpus = 0
        if args.device != "cpu":
            import torch

            gpus = torch.cuda.device_count()
        args.processes = gpus or 2
    many = args.processes
    if many < 2:
        sys.exit(f"--processes {many}: nothing to compare W = 1 with (one GPU? give --device cpu)")
    if args.batch_size % many:
        sys.exit(f"--batch-size {args.batch_size} does not split over {many} processes")
    rows = [Row(f"{PLAIN}, W = 1", PLAIN, 1), Row(f"{PLAIN}, W = {many}", PLAIN, many)]
    if args.ceiling:
        rows.append(Row(f"{many} one-process runs of b / {many} side by side", CEILING, many))
    if not args.no_online:
        rows += [
            Row(f"{ONLINE}, W = 1 (either scope)", ONLINE, 1),
            Row(f"{GLOBAL}, W = {many}", GLOBAL, many),
            Row(f"{LOCAL}, W = {many}", LOCAL, many),
        ]

    started = time.perf_counter()
    results: dict[Row, list[Measure]] = {row: [] for row in rows}
    with tempfile.TemporaryDirectory(prefix="curate-train-scaling-") as scratch:
        curate = [sys.executable, "-m", "curate"]
        synth = ["synth", f"{scratch}/data", "--n", str(args.n), "--samples-per-shard", "250", "--seed", "0",
                 "--image-size", str(args.image_size), "--eval-per-class", "1", "--workers",
                 str(max(2, args.workers))]  # fmt: skip
        run(curate + synth, env, f"{scratch}/synth.log", args.timeout)
        data, scores = f"{scratch}/data/web", f"{scratch}/scores"
        if not args.no_online:
            run(
                curate + ["score", data, "-o", scores, "--model", args.ref_model, "--allow-random-init",
                          "--device", args.device, "--workers", str(args.workers)],
                env, f"{scratch}/score.log", args.timeout,
            )  # fmt: skip
        prepared = time.perf_counter() - started
        for round_ in range(args.runs):  # alternating: each round runs every row once, in the same order
            for index, row in enumerate(rows):
                out = f"{scratch}/run{round_}-{index}"
                if row.variant == CEILING:  # W runs of b / W at once, one GPU each with --device auto
                    batch = args.batch_size // row.processes
                    runs = [
                        start(
                            command(args, row, data, scores, f"{out}-{i}", batch),
                            dict(env, CUDA_VISIBLE_DEVICES=str(i)) if args.device != "cpu" else env,
                            f"{out}-{i}.log",
                        )
                        for i in range(row.processes)
                    ]
                    wall = max([finish(launched, args.timeout) for launched in runs])
                    rate = sum(
                        steady_state(f"{out}-{i}/metrics.jsonl", args, batch)[0] for i in range(row.processes)
                    )
                    exchange = None
                else:
                    wall = run(
                        command(args, row, data, scores, out, args.batch_size),
                        env,
                        f"{out}.log",
                        args.timeout,
                    )
                    rate, exchange = steady_state(f"{out}/metrics.jsonl", args, args.batch_size)
                results[row].append(Measure(rate, exchange, wall))
                print(
                    f"round {round_ + 1}/{args.runs}: {row.name}: {rate:.1f} samples/s ({wall:.0f} s)",
                    flush=True,
                )
    report(args, rows, results, prepared, time.perf_counter() - started)


def report(
    args: argparse.Namespace,
    rows: list[Row],
    results: dict[Row, list[Measure]],
    prepared: float,
    total: float,
) -> None:
    many = args.processes
    threads = f", {args.threads} torch thread(s) per rank" if args.device == "cpu" else ""
    online = f", online F = {args.ratio} (B = {round(args.batch_size / (1 - args.ratio))}), N = {args.chunks}"
    print(
        f"\n{args.model}, global b = {args.batch_size}, {args.steps} steps (rate over steps "
        f"≥ {math.ceil(args.skip * args.steps)}, log every {args.log_every}), {args.device} {args.precision}"
        f"{threads}{'' if args.no_online else online}; {args.runs} rounds; {os.cpu_count()} CPUs, load "
        f"average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; data and scores {prepared:.0f} s, "
        f"all {total:.0f} s"
    )
    by = {row.variant: results[row] for row in rows if row.processes > 1}
    one = {row.variant: results[row] for row in rows if row.processes == 1}
    baseline = {PLAIN: one[PLAIN], CEILING: one[PLAIN]}
    if not args.no_online:
        baseline[GLOBAL] = baseline[LOCAL] = one[ONLINE]
    print("| run | samples/s (median) | min–max | × W = 1 (same round) | min–max |\n|---|---|---|---|---|")
    for row in rows:
        rates = [m.rate for m in results[row]]
        scaling = ["", ""]
        if row.processes > 1:
            ratios = [m.rate / b.rate for m, b in zip(results[row], baseline[row.variant], strict=True)]
            scaling = [f"{statistics.median(ratios):.2f}×", spread(ratios, 2)]
        print(f"| {row.name} | {statistics.median(rates):.1f} | {spread(rates, 1)} | {' | '.join(scaling)} |")
    if not args.no_online:
        global_, local = by[GLOBAL], by[LOCAL]
        # Step time is b over the rate: global's over local's is local's rate over global's.
        ratios = [lo.rate / gl.rate for gl, lo in zip(global_, local, strict=True)]
        print(
            f"online JEST at W = {many}: step time global / local {statistics.median(ratios):.2f}× "
            f"({spread(ratios, 2)})"
        )
        shares = [m.exchange for m in global_ if m.exchange is not None]
        if shares:
            print(
                f"exchange's share of an online global step at W = {many} (rank 0): "
                f"{100 * statistics.median(shares):.1f}% ({100 * min(shares):.1f}–{100 * max(shares):.1f}%)"
            )
        else:
            print("exchange's share: metrics.jsonl has no time_share['exchange'] (a curate change?)")
    if args.ceiling:
        ratios = [m.rate / c.rate for m, c in zip(by[PLAIN], by[CEILING], strict=True)]
        print(
            f"plain W = {many} over the side-by-side runs (what this machine gives W processes): "
            f"{statistics.median(ratios):.2f}× ({spread(ratios, 2)})"
        )
    efficiency = 0.85
    print(
        f"targets: plain W = {many} ≥ {efficiency * many:.1f}× W = 1 ({efficiency:.0%} of linear; 1.7× at "
        "W = 2); online global's step within 1.15× of local's"
    )


if __name__ == "__main__":
    main()
