"""`curate select --backend ray`: super-batches selected in parallel by Ray tasks, handed back in order.

The driver cuts the seeded super-batches (`iter_super_batches`, as locally) and each task runs the local
backend's `select_super_batch` on one of them. Every super-batch's generators are seeded from (seed,
super-batch index), so selecting them out of order changes no row; results are yielded in index order and
the caller writes the same manifest bytes as a local run. At most two tasks per worker slot are in flight,
which bounds the embeddings held in Ray's object store.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator

import torch

from curate.backends.ray_cluster import ray_session, task_options, worker_errors, worker_slots
from curate.runtime import resolve_device
from curate.score.schema import ScoreFolder
from curate.select.config import SelectConfig
from curate.select.superbatch import SelectedBatch, select_super_batch
from curate.select.window import SuperBatch

IN_FLIGHT_PER_SLOT = 2  # one selecting, one queued: no slot idles while the driver reads the next window


@contextlib.contextmanager
def ray_selector(
    reference: ScoreFolder, learner: ScoreFolder | None, config: SelectConfig
) -> Iterator[Callable[[Iterable[SuperBatch]], Iterator[SelectedBatch]]]:
    """Join the Ray cluster of `config.ray`; yield a function running `select_super_batch` over
    super-batches there, its results in input order."""
    with ray_session(config.ray) as ray:
        slots = worker_slots(ray, config.ray)
        threads = min(slot.threads for slot in slots)
        remote = ray.remote(_select_in_worker).options(**task_options(slots[0], config.ray))
        folders = ray.put(reference), ray.put(learner)  # put once and shared, not pickled into every task

        def select_all(batches: Iterable[SuperBatch]) -> Iterator[SelectedBatch]:
            in_flight: deque = deque()
            with worker_errors(ray, "selecting"):
                for batch in batches:
                    in_flight.append(remote.remote(batch, *folders, config, threads))
                    if len(in_flight) >= IN_FLIGHT_PER_SLOT * len(slots):
                        yield _named(ray.get(in_flight.popleft()))
                while in_flight:
                    yield _named(ray.get(in_flight.popleft()))

        yield select_all


def _select_in_worker(
    batch: SuperBatch, reference: ScoreFolder, learner: ScoreFolder | None, config: SelectConfig, threads: int
) -> SelectedBatch:
    torch.set_num_threads(threads)  # tasks sharing a node share its cores
    with warnings.catch_warnings():
        # Ray hands numpy arrays over read-only, straight from its object store; selection only reads them
        # (and copies them to its device and dtype first), so torch's warning about that is noise.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return select_super_batch(batch, reference, learner, config, resolve_device(config.device))


def _named(batch: SelectedBatch) -> SelectedBatch:
    batch.device = f"ray {batch.device}"
    return batch
