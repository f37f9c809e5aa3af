"""The processes of one training job: who this process is (`Ranks`), and the few collectives the trainer
needs beyond DDP's (`Group`).

A job is launched the way open_clip's is: `torchrun --nproc-per-node N -m curate train ...` (on one node,
or on many with a c10d rendezvous), or one task per GPU under SLURM's `srun` (SLURM's own variables, with
MASTER_ADDR and MASTER_PORT exported by the batch script). Without either, the job is this one process and
every collective here is the identity, so the trainer has one code path whatever the world size.

The model's collectives run on the training device (NCCL on CUDA, gloo on the CPU); host objects (keys,
counts, the rows of a memory cache) go over a second, gloo group, so they never occupy a GPU. Every
collective has a timeout: a rank that died or stalled ends the others with one line, never a hang.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from curate.errors import CurateError, first_line

DEFAULT_TIMEOUT = 600  # seconds a collective waits for the other ranks


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: built once, handed to the data, the loss and the run writers."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # on this node: picks the GPU
    local_world_size: int = 1  # processes on this node: they share its RAM

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Ranks:
        """torchrun's RANK/WORLD_SIZE/LOCAL_RANK, else srun's SLURM_PROCID/SLURM_STEP_NUM_TASKS/SLURM_LOCALID
        (a job step of several tasks; the batch script itself is one process), else one process."""
        if "RANK" in environ and "WORLD_SIZE" in environ:
            names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
        elif int(environ.get("SLURM_STEP_NUM_TASKS", "1") or 1) > 1 and "SLURM_PROCID" in environ:
            names = ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID", "SLURM_STEP_TASKS_PER_NODE")
        else:
            return cls()
        try:
            rank, world, local = (int(environ.get(name, "0")) for name in names[:3])
            # SLURM writes tasks per node as "4(x2)" (4 tasks on each of 2 nodes): the first count is ours
            # on a homogeneous allocation, which is what one task per GPU gives.
            local_world = int(environ.get(names[3], "1").split("(")[0].split(",")[0] or 1)
        except ValueError:
            raise CurateError(f"cannot read this process's rank from {', '.join(names)}") from None
        if not 0 <= rank < world:
            raise CurateError(f"{names[0]}={rank} is not a rank of {names[1]}={world}")
        if world > 1 and names[0] == "SLURM_PROCID":
            missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in environ]
            if missing:
                raise CurateError(
                    f"srun started {world} tasks but {' and '.join(missing)} is not set: export them in the "
                    "batch script (see examples/train.sbatch), or launch with torchrun"
                )
        return cls(rank, world, local, max(1, local_world))

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes the run folder and prints progress."""
        return self.rank == 0

    def share(self, total: int, option: str) -> int:
        """`total` split evenly over the ranks (a global batch into each rank's part), else one line."""
        if total % self.world_size:
            raise CurateError(
                f"{option} {total} does not split over {self.world_size} processes: it is the global size, "
                f"so give a multiple of {self.world_size}"
            )
        return total // self.world_size

    def part(self, total: int) -> slice:
        """This rank's positions in a sequence of `total` split evenly (the caller checked it splits)."""
        size = total // self.world_size
        return slice(self.rank * size, (self.rank + 1) * size)

    def device(self, requested: str) -> str:
        """`auto` and `cuda` mean this process's own GPU (cuda:LOCAL_RANK) when the job has several."""
        if self.world_size > 1 and requested in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return requested


class Group:
    """The job's process group, joined once; with one process every method is the identity and nothing is
    initialised. Close it (or use it as a context manager) to leave the job cleanly."""

    def __init__(self, ranks: Ranks, device: torch.device, timeout: float = DEFAULT_TIMEOUT):
        self.ranks, self.device = ranks, device
        self._host = None
        if ranks.world_size == 1:
            return
        if dist.is_initialized():
            raise CurateError("a torch.distributed process group is already running in this process")
        wait = timedelta(seconds=timeout)
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(
                backend,
                rank=ranks.rank,
                world_size=ranks.world_size,
                timeout=wait,
                device_id=device if device.type == "cuda" else None,
            )
            self._host = (
                dist.new_group(backend="gloo", timeout=wait) if backend == "nccl" else dist.group.WORLD
            )
        except (dist.DistError, RuntimeError, ValueError) as error:
            message = f"cannot join the other {ranks.world_size - 1} processes: {first_line(error)}"
            raise CurateError(message) from None

    def __enter__(self) -> Group:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.ranks.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()

    def gather_objects(self, value: object) -> list:
        """Every rank's `value` (picklable, on the host), in rank order: a host collective, no GPU sync."""
        if self.ranks.world_size == 1:
            return [value]
        out: list = [None] * self.ranks.world_size
        with lost_contact(self.ranks):
            dist.all_gather_object(out, value, group=self._host)
        return out

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's `tensor` (same shape on each), concatenated along the first axis in rank order, on
        the device it came from: no host sync."""
        if self.ranks.world_size == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.ranks.world_size)]
        with lost_contact(self.ranks):
            dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of a device tensor (a loss), on the device."""
        if self.ranks.world_size == 1:
            return tensor
        tensor = tensor.clone()
        with lost_contact(self.ranks):
            dist.all_reduce(tensor)
        return tensor / self.ranks.world_size

    def exchange(self, outgoing: list[torch.Tensor], incoming: list[torch.Tensor]) -> None:
        """Send `outgoing[r]` to rank r and fill `incoming[r]` from it (sizes agreed beforehand; one's own
        entries are copied). On the device of the tensors: the training group's backend carries them."""
        if self.ranks.world_size == 1:
            incoming[0].copy_(outgoing[0])
            return
        me = self.ranks.rank
        incoming[me].copy_(outgoing[me])
        group = self._host if outgoing[me].device.type == "cpu" else None
        ops = []
        for peer in range(self.ranks.world_size):
            if peer != me and outgoing[peer].numel():
                ops.append(dist.P2POp(dist.isend, outgoing[peer].contiguous(), peer, group=group))
            if peer != me and incoming[peer].numel():
                ops.append(dist.P2POp(dist.irecv, incoming[peer], peer, group=group))
        if ops:
            with lost_contact(self.ranks):
                for request in dist.batch_isend_irecv(ops):
                    request.wait()


class lost_contact:  # noqa: N801 - used as a context manager, like contextlib's
    """Turns a collective that failed (a peer died) or timed out (a peer stalled) into one line."""

    def __init__(self, ranks: Ranks):
        self.ranks = ranks

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> bool:
        many = self.ranks.world_size > 1  # one process has no peer to lose: its errors stay its own
        if many and isinstance(error, dist.DistError | RuntimeError) and _is_collective(error):
            raise CurateError(
                f"rank {self.ranks.rank} of {self.ranks.world_size}: lost the other processes "
                f"({first_line(error)}); one of them failed (its error is above) or stalled"
            ) from None
        return False


def _is_collective(error: BaseException) -> bool:
    if isinstance(error, dist.DistError):
        return True
    text = str(error).lower()
    return any(word in text for word in ("gloo", "nccl", "timed out", "connection", "peer", "socket"))
