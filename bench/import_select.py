"""`curate import datacomp` then `curate select` on a generated DataComp-format pool: samples/s, peak RSS,
and what DataComp's xlarge pool (12.8B samples) would take.

    python bench/import_select.py                                # 1e6 samples (about 6 GB on disk)
    python bench/import_select.py --samples 10000000             # the issue's size (about 60 GB on disk)
    python bench/import_select.py --samples 200000 --methods clipscore   # a quick look

The pool is written as DataComp ships it (curate/imports/datacomp.py's docstring): files of
--rows-per-file samples, each a `{hash}.parquet` (uid, url, text, original_width, original_height,
clip_l14_similarity_score) beside a `{hash}.npz` of l14_img and l14_txt (float16, D = 768; DataComp's own
also holds the b32 arrays, which the import never reads). Planted structure: each image near one of
--concepts unit centroids, its caption near the same one except a --noise share from another, so the
calibration and JEST have something to find. Each stage runs as the CLI in a fresh process, timed end to
end (Python and torch start-up included); its peak RSS is that process's own (ru_maxrss, read as it exits).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from measured_cli import run_measured

XLARGE = 12_800_000_000
DIM = 768


def write_pool(
    folder: Path,
    n: int,
    rows_per_file: int,
    concepts: int,
    noise: float,
    seed: int = 0,
    distinct_arrays: int | None = None,
) -> None:
    """`n` samples in DataComp's layout, planted as the module docstring says. With `distinct_arrays` K,
    pool file i's `.npz` is a hard link to file i mod K's (its Parquet gets new uids and urls, the same
    text and similarity): a pool that takes K files' disk, for a machine that cannot hold the whole pool
    beside its score folder."""
    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((concepts, DIM), np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    folder.mkdir(parents=True, exist_ok=True)
    made: list[tuple[Path, np.ndarray, np.ndarray]] = []  # (npz, described, similarity) of the K made
    for index, start in enumerate(range(0, n, rows_per_file)):
        rows = min(rows_per_file, n - start)
        name = f"{rng.integers(0, 2**63):016x}"
        if distinct_arrays and index >= distinct_arrays and len(made[index % distinct_arrays][1]) == rows:
            source, described, similarity = made[index % distinct_arrays]
            os.link(source, folder / f"{name}.npz")
        else:
            concept = rng.integers(0, concepts, rows)
            described = np.where(rng.random(rows) < noise, rng.integers(0, concepts, rows), concept)
            image = _unit(centroids[concept] + 1.2 * rng.standard_normal((rows, DIM), np.float32) / DIM**0.5)
            text = _unit(centroids[described] + 1.2 * rng.standard_normal((rows, DIM), np.float32) / DIM**0.5)
            similarity = np.einsum("nd,nd->n", image, text)
            arrays = {"l14_img": image.astype(np.float16), "l14_txt": text.astype(np.float16)}
            np.savez(folder / f"{name}.npz", **arrays)
            made.append((folder / f"{name}.npz", described, similarity))
        halves = rng.integers(0, 2**63, (rows, 2), dtype=np.int64)
        uids = [f"{a:016x}{b:016x}" for a, b in halves.tolist()]
        table = pa.table(
            {
                "uid": uids,
                "url": [f"https://example.com/{uid}.jpg" for uid in uids],
                "text": [f"concept {c}" for c in described.tolist()],
                "original_width": rng.integers(64, 2048, rows),
                "original_height": rng.integers(64, 2048, rows),
                "clip_l14_similarity_score": similarity,
            }
        )
        pq.write_table(table, folder / f"{name}.parquet")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--rows-per-file", type=int, default=100_000)
    parser.add_argument("--concepts", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--methods", nargs="+", default=["clipscore", "jest"])
    parser.add_argument("--ratio", type=float, default=0.7)
    parser.add_argument(
        "--distinct-arrays",
        type=int,
        default=None,
        help="K: only K pool files' arrays on disk, the rest hard links to them (see write_pool)",
    )
    parser.add_argument("--work", default=None, help="folder for the pool and outputs (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated pool and score folder")
    args = parser.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="curate-import-bench-"))
    pool, scores = work / "pool", work / "scores"
    try:
        if not pool.exists():
            start = time.perf_counter()
            write_pool(
                pool,
                args.samples,
                args.rows_per_file,
                args.concepts,
                args.noise,
                distinct_arrays=args.distinct_arrays,
            )
            print(
                f"(generated {args.samples:,} samples in {time.perf_counter() - start:.0f} s)",
                file=sys.stderr,
            )
        shutil.rmtree(scores, ignore_errors=True)
        cores = os.cpu_count()
        print(
            f"import + select: {args.samples:,} samples, D = {DIM} fp16, files of {args.rows_per_file:,}, "
            f"{cores} cores, load {os.getloadavg()[0]:.1f}"
        )
        print("| stage | seconds | samples/s | peak RSS (MiB) |")
        print("|---|---|---|---|")
        rates = {}
        imported = run_measured("import", "datacomp", str(pool), "-o", str(scores))
        rates["import"] = args.samples / imported.seconds
        print(
            f"| import datacomp | {imported.seconds:.0f} | {rates['import']:,.0f} "
            f"| {imported.peak_mib:.0f} |",
            flush=True,
        )
        print(f"  {imported.line}", file=sys.stderr)
        for method in args.methods:
            out = work / f"manifest-{method}"
            shutil.rmtree(out, ignore_errors=True)
            selected = run_measured(
                "select", str(scores), "-o", str(out), "--method", method, "--ratio", str(args.ratio)
            )
            rates[method] = args.samples / selected.seconds
            print(
                f"| select --method {method} | {selected.seconds:.0f} | {rates[method]:,.0f} "
                f"| {selected.peak_mib:.0f} |",
                flush=True,
            )
            print(f"  {selected.line}", file=sys.stderr)

        per_sample = folder_bytes(scores) / args.samples
        pool_per_sample = folder_bytes(pool) / args.samples
        print(f"\nscore folder: {per_sample:,.0f} bytes per sample; pool: {pool_per_sample:,.0f}")
        print(
            f"DataComp xlarge ({XLARGE / 1e9:.1f}B samples), at these rates on this machine ({cores} cores):"
        )
        for stage, rate in rates.items():
            hours = XLARGE / rate / 3600
            print(f"  {stage}: {hours:,.0f} h here, {hours * cores:,.0f} core-hours")
        print(f"  score folder: {per_sample * XLARGE / 1e12:,.1f} TB")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
