"""Training data: a decoded in-memory cache when it fits (the demo's case), else streaming from tars.

The cache gives the batch of a step as a function of (seed, step) alone, so a resumed run sees exactly the
batches an uninterrupted one would; the stream re-seeds from the step it resumes at, so a resumed stream
sees other (equally shuffled) batches.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from curate.errors import CurateError
from curate.fileio import local_path
from curate.models import ImageTextModel
from curate.runtime import Progress
from curate.select.manifest import read_manifest
from curate.shards.batches import ShardBatches, already_batched, single_threaded_worker
from curate.shards.paths import count_samples
from curate.shards.schema import OK
from curate.train.config import TrainConfig


def make_data(
    config: TrainConfig,
    paths: list[str],
    model: ImageTextModel,
    referenced: dict[str, int] | None,
    start_step: int,
    progress: Progress | None = None,
) -> tuple[MemoryData | StreamData, int]:
    """The run's data, and how many of its samples were left out for want of a reference score.

    `referenced` (online JEST) holds the keys that have one: the others cannot be scored, so they are never
    drawn. Memory or stream as --cache says (auto: memory when the decoded set fits in a quarter of RAM).
    """
    settings = config.data
    keep = _manifest_keys(settings.manifest) if settings.manifest else None
    memory = settings.cache == "memory" or (
        settings.cache == "auto" and fits_in_memory(paths, model.image_size)
    )
    if memory:
        data = load_memory_data(
            paths, model.preprocess, model.tokenizer, keep, settings.workers, config.seed, progress
        )
        if referenced is None:
            return data, 0
        kept = data.only(referenced)
        if not len(kept):
            raise CurateError(
                "no training sample has a reference score: do --ref and the data hold the same keys?"
            )
        return kept, len(data) - len(kept)
    if referenced is not None:
        # A stream cannot count what it skips without reading it all first: decode only referenced keys.
        keep = frozenset(referenced) if keep is None else keep & frozenset(referenced)
    stream = StreamData(
        paths,
        model.preprocess,
        model.tokenizer,
        keep,
        settings.shuffle_buffer,
        f"{config.seed}/{start_step}",  # re-seeded from the step it starts at
        config.super_batch,
        settings.workers,
    )
    return stream, 0


def _manifest_keys(manifest: str) -> frozenset[str]:
    table = read_manifest(local_path(manifest, "--manifest"), ["key"])  # schema-checked: one-line errors
    return frozenset(table.column("key").to_pylist())


@dataclass
class Batch:
    images: torch.Tensor  # (n, C, H, W) preprocessed; float16 from the cache, float32 from the stream
    tokens: torch.Tensor  # (n, context_length)
    keys: list[str]

    def to(self, device: torch.device) -> Batch:
        """On the device, images as float32: the cache's float16 crosses the bus at half the bytes and is
        widened there (exactly: every float16 is a float32)."""
        images = self.images.to(device, non_blocking=True).float()
        return Batch(images, self.tokens.to(device, non_blocking=True), self.keys)


class MemoryData:
    """Every kept sample decoded once into one float16 tensor; batches are indexed by a seeded permutation."""

    def __init__(self, images: torch.Tensor, tokens: torch.Tensor, keys: list[str], seed: int):
        self.images, self.tokens, self.keys, self.seed = images, tokens, keys, seed
        self._permutations: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def rows(self, step: int, size: int) -> torch.Tensor:
        """Rows for `step`: positions [step·size, (step+1)·size) of an endless sequence of epochs, each a
        fresh permutation seeded by (seed, epoch)."""
        n = len(self)
        positions = torch.arange(step * size, (step + 1) * size)
        epochs = positions // n
        out = torch.empty(size, dtype=torch.long)
        for epoch in epochs.unique().tolist():
            mask = epochs == epoch
            out[mask] = self._permutation(epoch)[positions[mask] % n]
        return out

    def batch(self, step: int, size: int) -> Batch:
        return self.take(self.rows(step, size))

    def take(self, rows: torch.Tensor) -> Batch:
        return Batch(self.images[rows], self.tokens[rows], [self.keys[i] for i in rows.tolist()])

    def only(self, keys: dict[str, int] | frozenset[str]) -> MemoryData:
        """The samples whose key is in `keys`, same seed."""
        present = [i for i, key in enumerate(self.keys) if key in keys]
        if len(present) == len(self):
            return self
        rows = torch.tensor(present, dtype=torch.long)
        return MemoryData(self.images[rows], self.tokens[rows], [self.keys[i] for i in present], self.seed)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._permutations:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._permutations = {epoch: torch.randperm(len(self), generator=generator)}  # keep one epoch
        return self._permutations[epoch]


def load_memory_data(
    paths: list[str],
    preprocess: Callable,
    tokenizer: Callable,
    keep: frozenset[str] | None,
    workers: int,
    seed: int,
    progress: Progress | None = None,
) -> MemoryData:
    loader = DataLoader(
        ShardBatches(paths, preprocess, tokenizer, batch_size=512, keep=keep),
        batch_size=None,
        num_workers=min(workers, len(paths)),
        worker_init_fn=single_threaded_worker,
        collate_fn=already_batched,
    )
    images, tokens, keys = [], [], []
    total, seen = count_samples(paths), 0
    for batch in loader:
        ok = [i for i, status in enumerate(batch.status) if status == OK]
        if ok:
            images.append(batch.images.half())  # half the memory; values are normalised pixels, well in range
            tokens.append(batch.tokens)
            keys += [batch.keys[i] for i in ok]
        seen += len(batch.keys)
        if progress:
            progress(seen, total)
    if not keys:
        raise CurateError(f"no trainable samples in {', '.join(paths[:3])}{' ...' if len(paths) > 3 else ''}")
    return MemoryData(torch.cat(images), torch.cat(tokens), keys, seed)


def fits_in_memory(paths: list[str], image_size: int) -> bool:
    """Decoded float16 images plus tokens under a quarter of this machine's RAM (unknown size: stream)."""
    samples = count_samples(paths)
    if samples is None:
        return False
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return samples * (3 * image_size * image_size * 2 + 512) < ram // 4


class StreamingSamples(IterableDataset):
    """Endless samples from tars, shard order and a shuffle buffer seeded per (seed, worker, epoch)."""

    def __init__(self, paths, preprocess, tokenizer, keep, buffer: int, seed: int | str):
        self.paths, self.preprocess, self.tokenizer = paths, preprocess, tokenizer
        self.keep, self.buffer, self.seed = keep, buffer, seed

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        mine = self.paths[worker::workers] or self.paths  # more workers than shards: share them
        rng = random.Random(f"{self.seed}/{worker}")
        buffer: list[dict] = []
        for epoch in range(1 << 62):
            order = list(mine)
            random.Random(f"{self.seed}/{worker}/{epoch}").shuffle(order)
            decoded = ShardBatches(order, self.preprocess, self.tokenizer, batch_size=64, keep=self.keep)
            for batch in decoded:
                ok = [i for i, status in enumerate(batch.status) if status == OK]
                for row, i in enumerate(ok):
                    sample = {
                        "image": batch.images[row],
                        "tokens": batch.tokens[row],
                        "key": batch.keys[i],
                    }
                    if len(buffer) < self.buffer:
                        buffer.append(sample)
                        continue
                    slot = rng.randrange(len(buffer))
                    yield buffer[slot]
                    buffer[slot] = sample
            if epoch == 0 and not buffer:
                raise CurateError("no trainable samples in the training shards")


class StreamData:
    """Batches of a fixed size from a DataLoader over `StreamingSamples`, for data larger than RAM."""

    def __init__(
        self, paths, preprocess, tokenizer, keep, buffer: int, seed: int | str, size: int, workers: int
    ):
        dataset = StreamingSamples(paths, preprocess, tokenizer, keep, buffer, seed)
        loader = DataLoader(
            dataset,
            batch_size=size,
            num_workers=workers,
            worker_init_fn=single_threaded_worker,
            drop_last=True,
        )
        self._batches = iter(loader)

    def batch(self, step: int, size: int) -> Batch:
        """The next batch of the stream (of the size it was made with; `step` is for MemoryData's sake)."""
        sample = next(self._batches)
        return Batch(sample["image"], sample["tokens"], list(sample["key"]))
