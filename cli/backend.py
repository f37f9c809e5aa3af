"""The `--backend` options that `curate score` and `curate select` share (parsing only)."""

from __future__ import annotations

from typing import Annotated

import typer

from curate.backends.ray_cluster import RayConfig  # light: Ray itself is imported only by a Ray run

Backend = Annotated[
    str, typer.Option(help="local (this machine) or ray (a Ray cluster; pip install 'jest-curate[ray]').")
]
RayAddress = Annotated[
    str | None,
    typer.Option(
        metavar="ADDR",
        help="Ray cluster to join: HOST:PORT of `ray start --head`, or auto (the one this machine belongs "
        "to); default: a private Ray instance on this machine.",
    ),
]
GpusPerWorker = Annotated[float, typer.Option(help="GPUs per Ray worker (0.25 puts four on one GPU).")]
WorkersPerNode = Annotated[
    int | None, typer.Option(help="Ray workers per node (default: its GPUs / --gpus-per-worker, else 1).")
]


def ray_config(address: str | None, gpus_per_worker: float, workers_per_node: int | None) -> RayConfig:
    return RayConfig(address=address, gpus_per_worker=gpus_per_worker, workers_per_node=workers_per_node)
