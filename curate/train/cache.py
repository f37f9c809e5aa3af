"""The memory cache over the ranks of a job: each rank decodes a share, the ranks agree on one catalogue of
every sample decoded, and each keeps only the rows it will train, received from the rank that decoded them.

With one process the share is everything and nothing moves. With W, no sample is decoded twice, and a
rank holds at most the rows of its part of the steps still to run (all of them once a run spans an epoch
per rank). The catalogue's order is the shards' order as given, then each shard's own order, whatever the
number of ranks or of decoding workers: so the batch of a step is the same under any W.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, IterableDataset

from curate.distributed import Group
from curate.runtime import Progress
from curate.shards.batches import ShardBatches, already_batched, single_threaded_worker
from curate.shards.paths import count_samples
from curate.shards.schema import OK
from curate.train.reference import Reference, ReferencedBatches


@dataclass
class Rows:
    """Decoded samples: images (n, C, H, W) float16, tokens (n, L), their keys and, under online JEST,
    the reference's (image, text) embeddings, (n, D) float16 each."""

    images: torch.Tensor
    tokens: torch.Tensor
    keys: list[str]
    reference: tuple[torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, index: torch.Tensor) -> Rows:
        reference = None if self.reference is None else tuple(t[index] for t in self.reference)
        return Rows(self.images[index], self.tokens[index], [self.keys[i] for i in index.tolist()], reference)

    def _tensors(self) -> list[torch.Tensor]:
        return [self.images, self.tokens, *(self.reference or ())]

    def pack(self) -> torch.Tensor:
        """Each row's tensors as one row of bytes (n, row_bytes): one message per peer, any dtypes."""
        n = len(self)
        return torch.cat([t.reshape(n, -1).contiguous().view(torch.uint8) for t in self._tensors()], dim=1)

    def unpack(self, packed: torch.Tensor, keys: list[str]) -> Rows:
        """Rows of `packed` (made by `pack` of rows shaped like these), with their keys."""
        n, parts, at = len(packed), [], 0
        for like in self._tensors():
            width = _row_bytes(like)
            chunk = packed[:, at : at + width].contiguous().view(like.dtype)
            parts.append(chunk.reshape(n, *like.shape[1:]))
            at += width
        images, tokens, *reference = parts
        return Rows(images, tokens, keys, tuple(reference) if reference else None)

    @property
    def row_bytes(self) -> int:
        return sum(_row_bytes(t) for t in self._tensors())


def _row_bytes(tensor: torch.Tensor) -> int:
    return int(torch.Size(tensor.shape[1:]).numel()) * tensor.element_size()


def decode(
    paths: list[str],
    preprocess: Callable,
    tokenizer: Callable,
    keep: frozenset[str] | None,
    workers: int,
    reference: Reference | None,
    progress: Progress | None,
    on_batch: Callable,
) -> tuple[Rows, list[tuple[str, int]]]:
    """The decodable samples of `paths` (only `keep`'s keys, when given), in the shards' order and each
    shard's own order, and (path, rows) per shard in that order. `on_batch` hears of every decoded batch
    (skips, damage, the keys the tars held)."""
    decoded: IterableDataset = ShardBatches(paths, preprocess, tokenizer, batch_size=512, keep=keep)
    if reference is not None:
        decoded = ReferencedBatches(decoded, reference)
    loader = DataLoader(
        decoded,
        batch_size=None,
        num_workers=min(workers, len(paths)),
        worker_init_fn=single_threaded_worker,
        collate_fn=already_batched,
    )
    by_source: dict[str, list[Rows]] = {}
    total, seen = count_samples(paths), 0
    for item in loader:
        batch, embeddings = item if reference is not None else (item, None)
        ok = [i for i, status in enumerate(batch.status) if status == OK]
        if ok:  # half the memory; normalised pixels are well in float16's range
            rows = Rows(batch.images.half(), batch.tokens, [batch.keys[i] for i in ok], embeddings)
            by_source.setdefault(batch.source, []).append(rows)
        seen += len(batch.keys)
        on_batch(batch)
        if progress:
            progress(seen, total)
    # Workers interleave their shards; each shard's batches come in order from one worker.
    order = [path for path in paths if path in by_source]
    parts = [part for path in order for part in by_source[path]]
    shards = [(path, sum(len(p) for p in by_source[path])) for path in order]
    return concatenate(parts), shards


def concatenate(parts: list[Rows]) -> Rows:
    if not parts:
        return Rows(torch.zeros(0, dtype=torch.float16), torch.zeros(0, dtype=torch.long), [], None)
    reference = None
    if parts[0].reference is not None:
        reference = (torch.cat([p.reference[0] for p in parts]), torch.cat([p.reference[1] for p in parts]))
    return Rows(
        torch.cat([p.images for p in parts]),
        torch.cat([p.tokens for p in parts]),
        [key for p in parts for key in p.keys],
        reference,
    )


@dataclass
class Catalogue:
    """Every sample the ranks decoded, in one order all ranks agree on: global row g is local row
    `local[g]` of rank `owner[g]`."""

    keys: list[str]
    owner: torch.Tensor  # (N,) rank
    local: torch.Tensor  # (N,) row on that rank

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def gather(
        cls, group: Group, paths: list[str], shards: list[tuple[str, int]], keys: list[str]
    ) -> Catalogue:
        """From each rank's (path, rows) per shard and its keys: blocks ordered by the shard's place in
        `paths`, then by rank (a shard's rows may be split over ranks when they decoded keys, not shards)."""
        place = {path: i for i, path in enumerate(paths)}
        blocks = []
        for rank, (rank_shards, rank_keys) in enumerate(group.gather_objects((shards, keys))):
            start = 0
            for path, count in rank_shards:
                blocks.append((place[path], rank, start, rank_keys[start : start + count]))
                start += count
        blocks.sort(key=lambda block: block[:2])
        owner = [rank for _, rank, _, block in blocks for _ in block]
        local = [start + i for _, _, start, block in blocks for i in range(len(block))]
        return cls(
            [key for *_, block in blocks for key in block],
            torch.tensor(owner, dtype=torch.long),
            torch.tensor(local, dtype=torch.long),
        )


def assemble(group: Group, catalogue: Catalogue, decoded: Rows, needed: torch.Tensor) -> Rows:
    """This rank's rows `needed` (sorted global rows), in that order: its own from `decoded`, the others'
    received from the ranks that decoded them, which send theirs in the same call."""
    me, world = group.ranks.rank, group.ranks.world_size
    if world == 1:  # everything is local: no copy when every row is needed
        everything = len(needed) == len(decoded) and bool((needed == torch.arange(len(needed))).all())
        return decoded if everything else decoded.take(catalogue.local[needed])
    wants = group.gather_objects(needed)  # every rank's needs, so each knows what to send to whom
    outgoing, incoming = [], []
    for peer in range(world):
        theirs = wants[peer]
        sent = catalogue.local[theirs][catalogue.owner[theirs] == me]
        outgoing.append(
            decoded.take(sent).pack() if len(sent) else torch.zeros(0, decoded.row_bytes, dtype=torch.uint8)
        )
        count = int((catalogue.owner[needed] == peer).sum())
        incoming.append(torch.empty(count, decoded.row_bytes, dtype=torch.uint8))
    group.exchange(outgoing, incoming)
    # Rows from each peer arrive in global order; put them back in the order of `needed`.
    owners = catalogue.owner[needed]
    packed = torch.empty(len(needed), decoded.row_bytes, dtype=torch.uint8)
    for peer in range(world):
        packed[owners == peer] = incoming[peer]
    return decoded.unpack(packed, [catalogue.keys[g] for g in needed.tolist()])
