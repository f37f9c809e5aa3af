"""`curate select --backend ray`: one Ray task per partition, each running the local `run_partition`.

A task opens its partition's score files itself (the paths are absolute: workers do not share the driver's
working directory), makes its index, selects and writes its staged part into the shared output folder;
only its small result (counts, per-super-batch lines, a histogram) comes back. Its seed and batch numbers
are functions of the partition alone, so the parts are the local backend's, byte for byte.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from curate.backends.ray_cluster import ray_session, task_options, worker_errors, worker_slots
from curate.runtime import Progress
from curate.select.config import SelectConfig
from curate.select.partition import PartitionResult, PartitionTask, run_partition

Runner = Callable[[list[PartitionTask], Progress | None], list[PartitionResult]]


@contextlib.contextmanager
def ray_runner(config: SelectConfig) -> Iterator[Runner]:
    """Join the Ray cluster of `config.ray` (now: a bad address fails before any output exists); yield a
    function running partition tasks there, their results in task order, progress by finished partition."""
    with ray_session(config.ray) as ray:
        slots = worker_slots(ray, config.ray)
        threads = min(slot.threads for slot in slots)
        remote = ray.remote(_in_worker).options(**task_options(slots[0], config.ray))

        def run_all(tasks: list[PartitionTask], progress: Progress | None) -> list[PartitionResult]:
            # All submitted at once: Ray queues what the slots cannot take yet, and a task holds no more
            # than its own partition, so nothing piles up in the driver or the object store.
            pending = [remote.remote(task, threads) for task in tasks]
            with worker_errors(ray, "selecting"):
                waiting = list(pending)
                while waiting:
                    _, waiting = ray.wait(waiting, num_returns=1)
                    if progress:
                        progress(len(tasks) - len(waiting), len(tasks))
                return ray.get(pending)

        yield run_all


def _in_worker(task: PartitionTask, threads: int) -> PartitionResult:
    torch.set_num_threads(threads)  # tasks sharing a node share its cores
    result = run_partition(task)
    result.device = f"ray {result.device}"
    return result
