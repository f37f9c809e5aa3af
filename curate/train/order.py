"""Which batch of a manifest each step trains (`curate train --manifest M`, `--order batches`).

JEST chose each batch's members together, so the trainer keeps them together: step t trains batch t of the
manifest. A run longer than the manifest starts over, each later epoch in a fresh seeded order of the
batches (a batch's members stay together; only the order of batches changes). The plan is a function of
the manifest and the seed alone, so a resumed run trains exactly what an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from curate.errors import CurateError
from curate.seeds import epoch_seed


@dataclass
class BatchPlan:
    """A manifest's batches, numbered 0..S-1 by the rank of their ids: batch b is rows
    offsets[b]:offsets[b+1] of `keys` (and `shards`)."""

    keys: list[str]
    shards: list[str]
    offsets: np.ndarray
    seed: int
    _order: tuple[int, torch.Tensor] | None = field(default=None, repr=False)  # the last epoch's order

    @classmethod
    def from_manifest(cls, table: pa.Table, seed: int, where: str = "manifest") -> BatchPlan:
        """The plan of a manifest table with key, shard and batch columns. Steps follow the rank of the
        distinct batch ids, not the ids themselves: a manifest written in parts numbers its batches
        local_batch * P + part, so the ids need not be 0..S-1."""
        order = pc.sort_indices(table, [("batch", "ascending")])  # stable: draw order within a batch
        table = table.take(order)
        batches = table["batch"].to_numpy()
        if not len(batches):
            raise CurateError(f"{where} holds no batch to train")
        _, counts = np.unique(batches, return_counts=True)  # sorted ids: batch i is the i-th smallest
        return cls(
            table["key"].to_pylist(),
            table["shard"].to_pylist(),
            np.concatenate([[0], np.cumsum(counts)]),
            seed,
        )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def batch_size(self) -> int:
        """b: the size of its batches (a one-pass selection's last batch may be shorter)."""
        return int(np.diff(self.offsets).max())

    def locate(self, step: int) -> tuple[int, int]:
        """(batch, epoch) that `step` (0-based) trains: batch `step` in epoch 0, then seeded orders."""
        epoch, position = divmod(step, len(self))
        if epoch == 0:
            return position, 0
        if self._order is None or self._order[0] != epoch:
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            self._order = (epoch, torch.randperm(len(self), generator=generator))
        return int(self._order[1][position]), epoch

    def rows(self, batch: int) -> range:
        return range(int(self.offsets[batch]), int(self.offsets[batch + 1]))

    def keys_of(self, batch: int) -> list[str]:
        return self.keys[self.offsets[batch] : self.offsets[batch + 1]]
