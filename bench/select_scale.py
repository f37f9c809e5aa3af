"""`curate select` as the crawl grows: samples/s and the peak memory of the driver and of one worker.

    python bench/select_scale.py                                  # 1e6 samples, D = 256, local and Ray
    python bench/select_scale.py --sizes 1000000 10000000         # the docs table (about 11 GB on disk)
    python bench/select_scale.py --sizes 200000 --backends local  # a quick look

Each size gets a generated score folder (`make_score_folder`: D = 256, files of --rows-per-file samples,
planted structure: --concepts clusters, a --noise share of captions from another cluster, so JEST has
something to find). Each run is `curate select` in a fresh process, timed end to end; the driver's peak
resident set is that process's own (ru_maxrss, read as it exits). With `--backend ray` the driver starts a
private local Ray instance; a worker's peak is the largest VmHWM of any `ray::` process, polled while the
run lasts. Partitions hold --partition-size samples each, so one partition's index and window bound a
process's memory whatever N is: the driver's peak should stay flat as N grows, a worker's should track the
partition size, not N.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from measured_cli import run_measured

from curate.score.schema import OK, ScoreMetadata, write_score_file

MIB = 1 << 20


def make_score_folder(
    folder: Path, n: int, dim: int, rows_per_file: int, concepts: int, noise: float, seed: int = 0
) -> None:
    """Score files for `n` synthetic samples: each image near one of `concepts` unit centroids, its caption
    near the same centroid, except a `noise` share whose caption comes from another concept."""
    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((concepts, dim)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    metadata = ScoreMetadata(
        model="siglip-tiny",
        pretrained="",
        logit_scale=10.0,
        logit_bias=-10.0,
        embed_dim=dim,
        image_size=32,
        version="bench",
        weights="bench-generated",
    ).as_strings()
    folder.mkdir(parents=True, exist_ok=True)
    for number, start in enumerate(range(0, n, rows_per_file)):
        rows = min(rows_per_file, n - start)
        concept = rng.integers(0, concepts, rows)
        caption_concept = np.where(rng.random(rows) < noise, rng.integers(0, concepts, rows), concept)
        image = _unit(centroids[concept] + 0.6 * rng.standard_normal((rows, dim), np.float32) / dim**0.5)
        text = _unit(
            centroids[caption_concept] + 0.6 * rng.standard_normal((rows, dim), np.float32) / dim**0.5
        )
        shard = f"{number:05d}.tar"
        write_score_file(
            folder / f"{number:05d}.parquet",
            shard,
            keys=[f"{number:05d}{i:07d}" for i in range(rows)],
            captions=[""] * rows,
            status=[OK] * rows,
            image_emb=image.astype(np.float16),
            text_emb=text.astype(np.float16),
            similarity=np.einsum("nd,nd->n", image, text),
            metadata=metadata,
        )


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class WorkerPeak:
    """The largest VmHWM (peak resident set) of any Ray worker process (`ray::…`) seen while polling."""

    def __init__(self, every: float = 0.5):
        self.peak_kb, self._every, self._stop = 0, every, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> WorkerPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.wait(self._every):
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    if not (proc / "cmdline").read_bytes().startswith(b"ray::"):
                        continue
                    status = (proc / "status").read_text()
                except OSError:  # the process ended between the listing and the read
                    continue
                for line in status.splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_kb = max(self.peak_kb, int(line.split()[1]))


def run_select(scores: Path, out: Path, backend: str, extra: list[str]) -> dict:
    """One `curate select` in a fresh process: seconds, driver peak MiB, worker peak MiB (Ray)."""
    with WorkerPeak() as workers:
        measured = run_measured("select", str(scores), "-o", str(out), "--backend", backend, *extra)
    return {
        "seconds": measured.seconds,
        "driver_mib": measured.peak_mib,
        "worker_mib": workers.peak_kb / 1024 if backend == "ray" else None,
        "line": measured.line,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--rows-per-file", type=int, default=50_000)
    parser.add_argument("--concepts", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--backends", nargs="+", default=["local", "ray"], choices=["local", "ray"])
    parser.add_argument("--partition-size", type=int, default=1_000_000, help="samples per partition")
    parser.add_argument("--ratio", type=float, default=0.8)
    parser.add_argument("--method", default="jest", help="jest, independent, ... (curate select --method)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--work", default=None, help="folder for the generated crawls (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated score folders")
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="curate-select-scale-"))
    extra = [
        "--ratio",
        str(args.ratio),
        "--batch-size",
        str(args.batch_size),
        "--partition-size",
        str(args.partition_size),
    ]
    print(
        f"select at scale: --method {args.method}, D = {args.dim}, ratio {args.ratio}, "
        f"batch {args.batch_size}, "
        f"{args.partition_size:,} samples per partition, {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(
        "| samples | backend | partitions | seconds | samples/s "
        "| driver peak RSS (MiB) | worker peak RSS (MiB) |"
    )
    print("|---|---|---|---|---|---|---|")
    try:
        for n in args.sizes:
            scores = work / f"scores-{n}"
            if not scores.exists():
                start = time.perf_counter()
                make_score_folder(scores, n, args.dim, args.rows_per_file, args.concepts, args.noise)
                print(f"(generated {n:,} samples in {time.perf_counter() - start:.0f} s)", file=sys.stderr)
            for backend in args.backends:
                out = work / f"manifest-{n}-{backend}"
                result = run_select(scores, out, backend, extra)
                parts = len(list(out.glob("part-*.parquet"))) or 1
                worker = f"{result['worker_mib']:.0f}" if result["worker_mib"] is not None else "—"
                print(
                    f"| {n:,} | {backend} | {parts} | {result['seconds']:.0f} "
                    f"| {n / result['seconds']:,.0f} | {result['driver_mib']:.0f} | {worker} |",
                    flush=True,
                )
                shutil.rmtree(out)
            if not args.keep:
                shutil.rmtree(scores)
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
