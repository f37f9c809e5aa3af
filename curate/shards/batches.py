"""Decode and tokenize shards into model-ready batches, in DataLoader workers (for `score` and `train`).

Each worker owns whole shards (shard i goes to worker i mod W), so a shard's batches arrive in order and
its last batch says so: `score` writes a shard's file the moment it is complete.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import IterableDataset, get_worker_info

from curate.fileio import basename
from curate.shards.images import decode_rgb
from curate.shards.reader import ReadStats, iter_shard
from curate.shards.schema import OK


@dataclass
class ShardBatch:
    shard: str  # "00003.tar"
    keys: list[str]
    captions: list[str]
    status: list[str]  # one per key; "ok" rows have an image and tokens, in order
    metas: list[dict]  # each sample's .json metadata ({} for rows that could not be read)
    sha256: list[str | None]  # hex digest of each row's image bytes, with `digests` (else None)
    images: torch.Tensor  # (n_ok, C, H, W)
    tokens: torch.Tensor  # (n_ok, context_length)
    last: bool  # the shard's final batch
    damage: str = ""  # why the shard could not be read whole, if it could not (on its last batch)
    unread: int = 0  # samples its _stats.json counts that the damaged tar did not hold (on its last batch)
    source: str = ""  # the path it was read from, as given (two folders may both hold a 00000.tar)


class ShardBatches(IterableDataset):
    def __init__(
        self,
        paths: list[str],
        preprocess: Callable,
        tokenizer: Callable,
        batch_size: int,
        keep: frozenset[str] | None = None,
        digests: bool = False,
    ):
        self.paths = paths
        self.keep = keep  # decode only these keys (a manifest's), skipping the rest unread
        self.digests = digests  # hash each image (score records it; training has no use for it)
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[ShardBatch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for path in self.paths[worker::workers]:
            yield from self._shard(path)

    def _shard(self, path: str) -> Iterator[ShardBatch]:
        shard, source = basename(path), path
        stats = ReadStats()
        rows: list[tuple[str, str, str, torch.Tensor | None, dict, str | None]] = []

        truncated_rows = 0

        def skipped(key: str, reason: str) -> None:
            nonlocal truncated_rows
            truncated_rows += reason == "truncated_tar"
            if self.keep is None or key in self.keep:
                rows.append((key, "", reason, None, {}, None))

        for sample in iter_shard(path, stats, check_images=False, on_skip=skipped):
            if self.keep is not None and sample.key not in self.keep:
                continue
            digest = hashlib.sha256(sample.image).hexdigest() if self.digests else None
            try:
                pixels = self.preprocess(decode_rgb(sample.image))  # grayscale and palette images too
                rows.append((sample.key, sample.caption, OK, pixels, sample.meta, digest))
            except Exception:  # PIL raises many types for bad bytes; the row says why, the run goes on
                rows.append((sample.key, sample.caption, "undecodable_image", None, sample.meta, digest))
            if len(rows) >= self.batch_size:
                yield self._batch(shard, rows, last=False, source=source)
                rows = []
        damage = "; ".join(why for _, why in stats.bad_shards)
        # The rows hold the half-read sample of a damaged tar; the stats also count those never reached.
        unread = stats.skipped["truncated_tar"] - truncated_rows
        yield self._batch(shard, rows, last=True, damage=damage, unread=unread, source=source)

    def _batch(
        self, shard: str, rows: list, last: bool, damage: str = "", unread: int = 0, source: str = ""
    ) -> ShardBatch:
        ok = [row for row in rows if row[3] is not None]
        images = torch.stack([row[3] for row in ok]) if ok else torch.zeros(0)
        tokens = self.tokenizer([row[1] for row in ok]) if ok else torch.zeros(0, dtype=torch.long)
        return ShardBatch(
            shard=shard,
            keys=[row[0] for row in rows],
            captions=[row[1] for row in rows],
            status=[row[2] for row in rows],
            metas=[row[4] for row in rows],
            sha256=[row[5] for row in rows],
            images=images,
            tokens=tokens,
            last=last,
            damage=damage,
            unread=unread,
            source=source,
        )


def single_threaded_worker(_: int) -> None:
    # Decoding workers each using every core would fight the model's own threads on small machines.
    torch.set_num_threads(1)


def already_batched(batch: ShardBatch) -> ShardBatch:
    """The DataLoader's collate_fn for datasets that batch themselves. A module-level function, not a
    lambda: under the spawn and forkserver start methods (macOS; Linux from Python 3.14) the loader
    pickles it into every worker."""
    return batch
