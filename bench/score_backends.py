"""`curate score` on the local backend against `--backend ray`, same shards, model and machine, one process.

    python bench/score_backends.py                          # siglip-tiny, 4,096 synthetic samples, CPU
    python bench/score_backends.py --n 20000 --model siglip-small --ray-workers 4

Local: one model in this process (--local-threads torch threads), --workers DataLoader processes
decoding. Ray: a private local Ray instance on this machine's cores, --ray-workers actors each holding a
model replica (the node's cores shared among them as torch threads) and decoding its own shards. Ray's
start-up (ray.init, then the actors starting and loading the model) is timed apart from the steady state
(scoring, from the moment every worker is ready).
Both write the same rows and metadata (all but each run's `curate.seconds`); the benchmark checks that.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from curate.backends.ray_cluster import RayConfig, import_ray  # noqa: E402
from curate.models import load_model, save_checkpoint  # noqa: E402
from curate.score import ScoreConfig, score_shards  # noqa: E402
from curate.score.schema import comparable  # noqa: E402
from curate.synth import SynthConfig, synthesize  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="siglip-tiny")
    parser.add_argument("--n", type=int, default=4096, help="synthetic samples to score")
    parser.add_argument("--samples-per-shard", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="local backend: DataLoader processes")
    parser.add_argument("--ray-workers", type=int, default=2, help="ray backend: actors (model replicas)")
    parser.add_argument(
        "--local-threads", type=int, default=None, help="local backend: torch threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.local_threads:
        torch.set_num_threads(args.local_threads)
    ray = import_ray()

    with tempfile.TemporaryDirectory() as scratch:
        torch.manual_seed(0)
        model = load_model(args.model, allow_random_init=True)
        # A checkpoint, so that every Ray actor loads the same weights as this process.
        checkpoint = f"{scratch}/model.pt"
        save_checkpoint(checkpoint, model.open_clip_name, model.config, model.state_dict(), step=0)
        data = f"{scratch}/data"
        synthesize(
            SynthConfig(n=args.n, seed=0, image_size=model.image_size,
                        samples_per_shard=args.samples_per_shard, curated_fraction=0, eval_per_class=1),
            data,
        )  # fmt: skip
        shards = f"{data}/web"
        local = ScoreConfig(
            model=checkpoint, batch_size=args.batch_size, workers=args.workers, overwrite=True
        )
        score_shards(f"{shards}/00000.tar", f"{scratch}/warmup", local)  # warm caches and imports
        start = time.perf_counter()
        local_run = score_shards(shards, f"{scratch}/local", local)
        local_wall = time.perf_counter() - start

        # Ray's files under a short path of their own: its unix sockets allow ~107 characters.
        ray_temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
        try:
            start = time.perf_counter()
            ray.init(
                num_cpus=os.cpu_count(), _temp_dir=ray_temp, include_dashboard=False, logging_level="warning"
            )
            init_seconds = time.perf_counter() - start
            on_ray = ScoreConfig(model=checkpoint, batch_size=args.batch_size, overwrite=True, backend="ray",
                                 ray=RayConfig(workers_per_node=args.ray_workers))  # fmt: skip
            start = time.perf_counter()
            ray_run = score_shards(shards, f"{scratch}/ray", on_ray)
            ray_wall = time.perf_counter() - start
        finally:
            ray.shutdown()
            shutil.rmtree(ray_temp, ignore_errors=True)
        names = sorted(os.listdir(f"{scratch}/local"))
        mismatch = [
            n
            for n in names
            if not comparable(f"{scratch}/local/{n}").equals(
                comparable(f"{scratch}/ray/{n}"), check_metadata=True
            )
        ]

    samples = local_run.samples
    print(f"{args.model} on cpu, batch {args.batch_size}, {samples} samples in {len(names)} shards, "
          f"{os.cpu_count()} CPUs; local: {args.workers} decode workers, {torch.get_num_threads()} torch "
          f"threads; ray: {ray_run.device}")  # fmt: skip
    columns = ("backend", "start-up s", "scoring s", "steady samples/s", "end-to-end samples/s")
    print("".join(f"{c:>22}" if i else f"{c:<8}" for i, c in enumerate(columns)))
    rows = (
        ("local", local_run.startup_seconds, local_run, local_wall),
        ("ray", init_seconds + ray_run.startup_seconds, ray_run, init_seconds + ray_wall),
    )
    for name, startup, run, wall in rows:
        figures = (startup, run.seconds, run.samples_per_second, samples / wall)
        print(f"{name:<8}" + "".join(f"{f:>22.1f}" for f in figures))
    print(f"ray start-up: ray.init {init_seconds:.1f} s, workers started and model loaded "
          f"{ray_run.startup_seconds:.1f} s")  # fmt: skip
    print(f"ratio ray / local: steady {ray_run.samples_per_second / local_run.samples_per_second:.2f}, "
          f"end-to-end {local_wall / (init_seconds + ray_wall):.2f}")  # fmt: skip
    print("outputs identical (rows and metadata but each run's curate.seconds)" if not mismatch
          else f"OUTPUTS DIFFER: {mismatch}")  # fmt: skip


if __name__ == "__main__":
    main()
