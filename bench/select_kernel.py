"""Benchmark of the JEST selection kernel: streaming vs dense vs a plain matmul of the same FLOPs.

    python bench/select_kernel.py                          # B in {4096, 16384, 65536}, D in {256, 768}
    python bench/select_kernel.py --sizes 4096 --dims 256  # a quick run
    python bench/select_kernel.py --device cuda --sizes 327680 --dims 768 --ratio 0.9  # the paper's size
    python bench/select_kernel.py --runs 9 --dense-limit-gib 0  # more runs, no dense twin

Every configuration runs in its own subprocess so peak memory is that configuration's alone. Inside it the
streaming sampler and the plain matmul run alternately `--runs` times, so a neighbour's load lands on both
about equally; the table gives the median rate of each with its spread (min-max over the runs) and the
ratio of the two medians. One run of each is too noisy on a shared machine: single runs of the same
configuration (B = 16,384, D = 256) gave 0.67 and 0.43. Peak memory
is the extra memory above the inputs: on CPU the peak resident set (VmHWM, reset through
/proc/self/clear_refs) minus the resident set after the inputs were built; on CUDA
torch.cuda.max_memory_allocated minus the memory allocated after the inputs were built.

The learnability criterion uses two models (reference and learner); the streaming sampler does
8 * (b - c_last) * B * D matmul FLOPs. The "matmul" row times that many FLOPs of plain [c, D] x [D, B]
products in the same process, the machine's limit for this work. GFLOP/s counts the streaming sampler's
FLOPs on every row, so for "dense" it is a rate of useful work, not of the B x B work it does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from curate.jest import PairEmbeddings, chunk_sizes, pair_scores, sample_jest, selection_size
from curate.jest.oracle import dense_jest

GIB = 1 << 30


def make_models(n: int, dim: int, device: str, dtype: torch.dtype) -> list[PairEmbeddings]:
    g = torch.Generator(device).manual_seed(0)
    models = []
    for scale, bias in ((20.0, -10.0), (10.0, -5.0)):
        image = F.normalize(torch.randn(n, dim, generator=g, device=device), dim=-1)
        text = F.normalize(image + 0.8 * torch.randn(n, dim, generator=g, device=device) / dim**0.5, dim=-1)
        models.append(PairEmbeddings(image.to(dtype), text.to(dtype), scale, bias))
        del image, text
    return models


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakMemory:
    """Peak extra memory of the block, over what was resident (CPU) or allocated (CUDA) when it began."""

    def __init__(self, device: str) -> None:
        self.device = device

    def __enter__(self) -> PeakMemory:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.base = _status("VmRSS")
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start
        peak = torch.cuda.max_memory_allocated() if self.device == "cuda" else _status("VmHWM")
        self.peak = peak - self.base


def plain_matmul(right: torch.Tensor, rows: int, flops: float) -> tuple[Callable[[], None], int]:
    """The machine's limit for the kernel's work: [rows, D] x [D, B] products against `right` ([B, D]),
    fp32 output as the kernel's, repeated to about `flops` FLOPs. Returns the runner and its exact FLOPs."""
    n, dim = right.shape
    left = torch.randn(rows, dim, device=right.device).to(right.dtype)
    # Zeroed, not empty: its pages are touched before the timing starts.
    out = torch.zeros(rows, n, device=right.device, dtype=torch.float32)
    reps = max(1, round(flops / (2 * rows * n * dim)))

    def matmul() -> None:
        for _ in range(reps):
            if right.is_cuda and right.dtype != torch.float32:
                torch.mm(left, right.T, out_dtype=torch.float32, out=out)
            else:
                torch.mm(left.float(), right.float().T, out=out)

    return matmul, 2 * rows * n * dim * reps


def worker(kind: str, n: int, dim: int, args: argparse.Namespace) -> dict:
    dtype = getattr(torch, args.dtype)
    size = selection_size(n, args.ratio, args.chunks)
    sizes = chunk_sizes(size, args.chunks)
    flops = 8 * (size - sizes[-1]) * n * dim
    # Warm up threads, kernels and cuBLAS on a small problem first.
    warm = pair_scores("learnability", *make_models(2048, dim, args.device, dtype))
    sample_jest(warm, 400, chunks=args.chunks, generator=torch.Generator(args.device).manual_seed(0))
    scores = pair_scores("learnability", *make_models(n, dim, args.device, dtype))
    result = {"kind": kind, "B": n, "D": dim, "b": size, "flops": flops}
    generator = torch.Generator(args.device)
    if kind == "stream":
        c = sizes[0]
        matmul, matmul_flops = plain_matmul(scores.terms[0][1].text, c, flops)
        # Alternate the two in one process, so that load from others on a shared machine falls on both.
        stream_s, matmul_s, peak = [], [], 0
        for _ in range(args.runs):
            with PeakMemory(args.device) as stream:
                sample_jest(
                    scores, size, chunks=args.chunks, generator=generator.manual_seed(1)
                ).indices.cpu()
            with PeakMemory(args.device) as mm:
                matmul()
            stream_s.append(stream.seconds)
            matmul_s.append(mm.seconds * flops / matmul_flops)  # scaled to exactly the sampler's FLOPs
            peak = max(peak, stream.peak)
        result |= {"seconds": stream_s, "matmul_seconds": matmul_s, "peak": peak}
    else:
        with PeakMemory(args.device) as dense:
            dense_jest(scores, size, chunks=args.chunks, generator=generator.manual_seed(1)).indices.cpu()
        result |= {"seconds": [dense.seconds], "peak": dense.peak}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="4096,16384,65536", help="super-batch sizes B, comma-separated")
    parser.add_argument("--dims", default="256,768", help="embedding dims D, comma-separated")
    parser.add_argument("--ratio", type=float, default=0.8, help="filter ratio f; b = round((1 - f) B)")
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--dtype", default=None, help="input embedding dtype (default float32 on cpu, float16 on cuda)"
    )
    parser.add_argument(
        "--runs",
        "--repeats",
        type=int,
        default=5,
        help="alternate sampler and matmul this many times per configuration (dense runs once)",
    )
    parser.add_argument("--dense-limit-gib", type=float, default=12.0, help="skip dense above this estimate")
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "B", "D"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.dtype = args.dtype or ("float16" if args.device == "cuda" else "float32")
    if args.worker:
        kind, n, dim = args.worker
        print(json.dumps(worker(kind, int(n), int(dim), args)))
        return

    device_name = (
        torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    )
    memory = (
        "CUDA max_memory_allocated" if args.device == "cuda" else "peak RSS (VmHWM) over RSS after inputs"
    )
    print(f"# JEST selection kernel, learnability with 2 models, f={args.ratio}, N={args.chunks}")
    print(f"# device: {device_name}; inputs {args.dtype}; torch {torch.__version__}; peak memory = {memory}")
    print(
        f"# {args.runs} runs of stream and matmul alternated in one process: median (min-max); the ratio "
        "is of the medians"
    )
    row("B", "D", "b", "method", "wall s", "peak MiB", "GFLOP/s", "(min-max)", "vs matmul")
    print("|" + "|".join("-" * (width + 2) for width in WIDTHS) + "|")
    forward = ["--ratio", str(args.ratio), "--chunks", str(args.chunks), "--device", args.device]
    forward += ["--dtype", args.dtype, "--runs", str(args.runs)]
    # Large blocks go straight to mmap and back on free, so the resident set tracks live tensors instead
    # of pages glibc keeps after the warm-up.
    env = os.environ | {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    for n in [int(s) for s in args.sizes.split(",")]:
        for dim in [int(d) for d in args.dims.split(",")]:
            for kind in ("stream", "dense"):
                # dense_jest holds A plus ~5 B x B temporaries while building it (two models' logits, losses).
                dense_gib = 6 * n * n * 4 / GIB
                if kind == "dense" and dense_gib > args.dense_limit_gib:
                    note = f"not run: ~{dense_gib:.0f} GiB"
                    row(n, dim, "", "dense", "-", f"~{dense_gib * 1024:.0f}", "-", "", "-", note)
                    continue
                cmd = [sys.executable, __file__, "--worker", kind, str(n), str(dim), *forward]
                r = json.loads(
                    subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
                )
                rate = Rates(r["flops"], r["seconds"])
                if kind == "stream":
                    matmul = Rates(r["flops"], r["matmul_seconds"])
                    seconds, median = matmul.cells()
                    row(n, dim, r["b"], "matmul", seconds, "", median, *matmul.spread(), "1.00")
                seconds, median = rate.cells()
                ratio = f"{rate.median / matmul.median:.2f}"
                row(n, dim, r["b"], kind, seconds, f"{r['peak'] / 2**20:.0f}", median, *rate.spread(), ratio)


class Rates:
    """GFLOP/s of each run of one method: its median and spread."""

    def __init__(self, flops: float, seconds: list[float]) -> None:
        self.seconds = statistics.median(seconds)
        self.rates = [flops / s / 1e9 for s in seconds]
        self.median = statistics.median(self.rates)

    def cells(self) -> tuple[str, str]:
        return f"{self.seconds:.3f}", f"{self.median:.1f}"

    def spread(self) -> tuple[str]:
        return (f"{min(self.rates):.1f}-{max(self.rates):.1f}" if len(self.rates) > 1 else "",)


WIDTHS = (6, 4, 5, 6, 8, 9, 8, 11, 9)


def row(*cells: object) -> None:
    """One markdown table row; a tenth cell, if any, is a note after the table."""
    text = "| " + " | ".join(f"{cell!s:>{w}}" for cell, w in zip(cells, WIDTHS, strict=False)) + " |"
    print(text + (f" {cells[9]}" if len(cells) > 9 else ""), flush=True)


if __name__ == "__main__":
    main()
