"""Joining a Ray cluster and laying workers out on it: what `score` and `select` share for `--backend ray`.

Ray is an optional extra (`pip install 'jest-curate[ray]'`), imported here only when a run asks for it,
so the rest of curate works without it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType

from curate.backends import BACKENDS
from curate.errors import CurateError, first_line
from curate.validate import check, non_negative

CONNECT_TIMEOUT_S = 5.0  # ray.init retries an unreachable GCS for minutes; a TCP probe fails in seconds
MAX_RESTARTS = 3  # a worker process lost mid-shard is restarted (and its shard retried) this often
# Copied into every worker's environment: workers on other machines do not inherit the driver's.
FORWARDED_ENV = ("HF_HUB_OFFLINE",)
KILL_ONCE_ENV = "CURATE_RAY_TEST_KILL_ONCE"  # exit_once_for_tests's switch


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None  # None: this process's Ray if it has one, else a private local instance
    gpus_per_worker: float = 0.0  # fractions put several workers on one GPU
    workers_per_node: int | None = None  # None: GPUs / gpus_per_worker with GPUs, else 1

    def __post_init__(self) -> None:
        check(
            non_negative(self.gpus_per_worker),
            "--gpus-per-worker",
            "a finite number >= 0",
            self.gpus_per_worker,
        )
        if self.workers_per_node is not None and self.workers_per_node < 1:
            raise CurateError(f"--workers-per-node must be at least 1, got {self.workers_per_node}")


def check_backend(backend: str, ray: RayConfig) -> None:
    """The stage configs' shared validation of `--backend` and the Ray options that need it."""
    if backend not in BACKENDS:
        raise CurateError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "ray" and ray != RayConfig():
        raise CurateError("--ray-address, --gpus-per-worker and --workers-per-node need --backend ray")


def import_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise CurateError("--backend ray needs Ray: pip install 'jest-curate[ray]'") from None
    return ray


@contextlib.contextmanager
def ray_session(config: RayConfig) -> Iterator[ModuleType]:
    """Yield the `ray` module, connected: to this process's existing Ray, to `config.address`, or to a
    private local instance. Disconnects afterwards only if it connected."""
    ray = import_ray()
    if ray.is_initialized():  # a library caller (or a test) owns the connection
        yield ray
        return
    address = config.address or os.environ.get("RAY_ADDRESS")  # ray.init reads RAY_ADDRESS too
    if address:
        _probe(address)
    try:
        # include_dashboard only applies to a new instance: none of its web UI is needed here
        ray.init(address=config.address, include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, TimeoutError, ValueError) as error:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise CurateError(f"cannot start or join {where}: {first_line(error)}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _probe(address: str) -> None:
    """Fail in seconds, with one line, where ray.init would retry an unreachable address for minutes."""
    if address == "auto":
        return  # ray.init finds the local cluster's address itself, and fails at once if there is none
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise CurateError(f"--ray-address must be HOST:PORT or auto, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise CurateError(
            f"cannot reach the Ray cluster at {address} ({error.strerror or error}); "
            "is `ray start --head` running there?"
        ) from None


@dataclass(frozen=True)
class WorkerSlot:
    node_id: str
    threads: int  # torch threads: the node's CPUs shared among its workers, at least 1
    cpus: float  # CPUs reserved from Ray's scheduler


def worker_slots(ray: ModuleType, config: RayConfig) -> list[WorkerSlot]:
    """`workers_per_node` slots on every live node with CPUs (fewer where its GPUs run out)."""
    slots = []
    for node in ray.nodes():
        resources = node.get("Resources", {})
        cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
        if not node.get("Alive") or not cpus:  # a head started with --num-cpus 0 is meant to run nothing
            continue
        if config.gpus_per_worker:
            fit = int(gpus // config.gpus_per_worker)
            count = min(config.workers_per_node or fit, fit)
        else:
            count = config.workers_per_node or 1
        share = cpus / count if count else 0.0
        # Half the share is reserved: a worker reserving whole CPUs can starve Ray's own tasks on a small
        # node and hang the run; the threads still use the whole share.
        slots += [WorkerSlot(node["NodeID"], max(1, math.floor(share)), share / 2)] * count
    if not slots:
        need = f"{config.gpus_per_worker} GPU(s) (--gpus-per-worker)" if config.gpus_per_worker else "CPUs"
        raise CurateError(f"no live Ray node has {need} for a worker: {ray.cluster_resources()}")
    return slots


def worker_options(slot: WorkerSlot, config: RayConfig) -> dict:
    """`.options()` of an actor on `slot`'s node; restarted (and its call retried) when its process dies."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {
        "num_cpus": slot.cpus,
        "num_gpus": config.gpus_per_worker,
        # soft: a restart may go to another node when this one is gone
        "scheduling_strategy": NodeAffinitySchedulingStrategy(slot.node_id, soft=True),
        "max_restarts": MAX_RESTARTS,
        "max_task_retries": MAX_RESTARTS,
        **_runtime_env(),
    }


def task_options(slot: WorkerSlot, config: RayConfig) -> dict:
    """`.options()` of a task sized like a worker slot, spread over the cluster and retried on failure."""
    return {
        "num_cpus": slot.cpus,
        "num_gpus": config.gpus_per_worker,
        "scheduling_strategy": "SPREAD",
        "max_retries": MAX_RESTARTS,
        **_runtime_env(),
    }


def _runtime_env() -> dict:
    env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
    if os.environ.get(KILL_ONCE_ENV):  # the test hook reaches the workers of the one run that sets it
        env[KILL_ONCE_ENV] = os.environ[KILL_ONCE_ENV]
    return {"runtime_env": {"env_vars": env}} if env else {}


@contextlib.contextmanager
def worker_errors(ray: ModuleType, what: str) -> Iterator[None]:
    """A user error raised in a worker reaches the CLI as itself; a worker that kept dying, as one line."""
    try:
        yield
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, CurateError):
            raise error.cause from None
        raise
    except ray.exceptions.RayActorError as error:
        raise CurateError(
            f"{what}: a Ray worker was lost for good ({first_line(error)}); "
            "finished outputs are kept, re-run to resume"
        ) from None


def exit_once_for_tests() -> None:
    """Test hook, off unless CURATE_RAY_TEST_KILL_ONCE=PATH is set: the first worker to get here creates
    PATH and exits abruptly, as a worker on a lost machine would; later calls (PATH exists) go on."""
    marker = os.environ.get(KILL_ONCE_ENV)
    if not marker:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))  # atomic: exactly one worker exits
    except FileExistsError:
        return
    os._exit(1)
