"""The uniform stream: endless shuffled batches from tars through webdataset's pipeline, for data larger
than RAM (no manifest batches; `--order shuffle` and online JEST included).

Each DataLoader worker runs webdataset's tar expansion and shuffle buffer over its share of the shards and
batches in the worker, so only whole batches cross to the trainer. The buffer holds encoded samples (bytes,
not decoded tensors): it fills without decoding, costs the bytes of the images rather than their pixels,
and only the samples that leave it are decoded. Skips are not counted by reason here (a worker has no way
back to the summary): a damaged shard and the samples of a shard without reference scores are logged;
the memory cache and a manifest's planned stream read with curate's own reader, which counts every reason.

Under W processes, rank r streams shards r, r + W, ... (every shard once per epoch over the ranks), split
over its workers the same way, each (rank, worker) stream seeded on its own.

Each stream's epoch has a shuffle buffer of its own, emptied before the next epoch starts, so no sample
comes twice in one epoch (runs streamed by 0.1.0 before many-process training landed mixed the buffer
across the boundary: resumed now, they continue in another order from the end of their first epoch).

Exact on resume: worker w's stream is a function of (seed, rank, role, epoch), where its role r = (w + start)
mod K for K workers, and the DataLoader takes batches from its workers in turn. So the batch of step t is
always the (t // K)-th batch of role t mod K, and a run resumed at step s has each role first draw, decode
and drop the batches it made for steps < s (decoded, not preprocessed: which samples decode decides which
samples make each batch). Exact for the same --workers and processes: both shape the order.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from functools import partial

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from curate.distributed import Ranks
from curate.errors import CurateError
from curate.fileio import basename, filesystem
from curate.shards.images import decode_rgb
from curate.shards.schema import CAPTION_EXTENSION, METADATA_EXTENSION, image_extension, is_safe_key
from curate.train.batch import Batch
from curate.train.reference import Reference

logger = logging.getLogger(__name__)

# (key, encoded image, caption, reference image row, reference text row): what the shuffle buffer holds
Encoded = tuple[str, bytes, str, np.ndarray | None, np.ndarray | None]


class UniformStream(IterableDataset):
    """Batches of `batch_size` samples of `paths` (only `keep`'s keys, when given), shuffled per (seed,
    role); with `reference`, each carries its samples' reference embeddings and a sample without them is
    skipped."""

    def __init__(
        self,
        paths: list[str],
        preprocess: Callable,
        tokenizer: Callable,
        keep: frozenset[str] | None,
        reference: Reference | None,
        buffer: int,
        seed: int,
        batch_size: int,
        start_step: int,
        ranks: Ranks | None = None,
    ):
        self.paths, self.preprocess, self.tokenizer = paths, preprocess, tokenizer
        self.keep, self.reference, self.buffer, self.seed = keep, reference, buffer, seed
        self.batch_size, self.start_step = batch_size, start_step  # this rank's part of a step's batch
        self.ranks = ranks or Ranks()
        if len(paths) < self.ranks.world_size:
            raise CurateError(
                f"{len(paths)} shard(s) for {self.ranks.world_size} processes: streaming, each process reads "
                "shards of its own, so give at least one shard per process (or --cache memory)"
            )

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        role = (worker + self.start_step) % workers
        rank, world = self.ranks.rank, self.ranks.world_size
        ours = self.paths[rank::world]  # this rank's shards, then its workers' shares of them
        mine = ours[role::workers] or ours  # more workers than shards: share them
        done = len(range(role, self.start_step, workers))  # this role's batches of the steps before start
        stream = role if world == 1 else rank * workers + role  # one process: the seeds it always had
        return self._batches(self._epochs(mine, f"{self.seed}/{stream}"), skip=done)

    def _epochs(self, paths: list[str], seed: str) -> Iterator[Encoded]:
        """The trainable samples of `paths`, epoch after epoch: each epoch opens every shard once, in a
        seeded order, through its own shuffle buffer, which empties before the next epoch starts (so no
        sample comes twice in one epoch, as a buffer filled across the boundary would have it)."""
        seen = {"samples": 0, "missing": 0}  # counted by `_trainable`, read by `_opened`
        for epoch in range(1 << 62):
            rng = random.Random(seed if epoch == 0 else f"{seed}/{epoch}")
            yield from wds.DataPipeline(
                partial(_opened, paths, f"{seed}/{epoch}", epoch, seen),
                partial(tar_file_expander, handler=_log_damage(), select_files=_not_metadata),
                partial(group_by_keys, handler=_log_damage()),
                partial(_trainable, keep=self.keep, reference=self.reference, seen=seen),
                wds.shuffle(self.buffer, initial=self.buffer, rng=rng),
            )
            if epoch == 0 and not seen["samples"]:
                raise CurateError("no trainable samples in the training shards")

    def _batches(self, samples: Iterator[Encoded], skip: int) -> Iterator[Batch]:
        """Decode and collate; the first `skip` batches are decoded only (to know which samples they
        hold) and dropped."""
        pixels, batch = [], []
        for sample in samples:
            try:
                image = decode_rgb(sample[1])
                if skip == 0:
                    pixels.append(self.preprocess(image))
            except Exception:  # PIL raises many types for bad bytes: the sample is skipped (uncounted)
                continue
            batch.append(sample)
            if len(batch) < self.batch_size:
                continue
            if skip:
                skip -= 1
            else:
                yield self._collate(pixels, batch)
            pixels, batch = [], []

    def _collate(self, pixels: list[torch.Tensor], samples: list[Encoded]) -> Batch:
        reference = None
        if self.reference is not None:
            image, text = np.stack([s[3] for s in samples]), np.stack([s[4] for s in samples])
            reference = (torch.from_numpy(image), torch.from_numpy(text))
        # float16 like the memory cache's: half the bytes through shared memory and to the device
        images = torch.stack(pixels).half()
        return Batch(images, self.tokenizer([s[2] for s in samples]), [s[0] for s in samples], reference)


def _opened(paths: list[str], seed: str, epoch: int, seen: dict) -> Iterator[dict]:
    """Each of `paths`, open, in a seeded order (fsspec, so the URLs curate reads elsewhere stream here
    too)."""
    order = list(paths)
    random.Random(seed).shuffle(order)
    for path in order:
        fs, fs_path = filesystem(path)
        try:
            stream = fs.open(fs_path, "rb", compression="infer")
        except OSError as error:
            logger.warning("cannot open %s (%s): trained without it", path, error)
            continue
        with stream:
            yield {"url": path, "stream": stream}
        # Resumed once every sample of the shard has been through `_trainable` (the pipeline pulls).
        if seen["missing"] and epoch == 0:  # later epochs skip the same samples
            logger.warning("%d samples of %s have no reference score: skipped", seen["missing"], path)
        seen["missing"] = 0


def _not_metadata(name: str) -> bool:
    """Training reads no sample's .json: its bytes are skipped in the tar, unread."""
    return not name.endswith(f".{METADATA_EXTENSION}")


def _log_damage() -> Callable[[Exception], bool]:
    """webdataset's error handler: log each damaged shard once per worker and go on with the next."""
    logged: set[str] = set()

    def handler(error: Exception) -> bool:
        where = str(error.args[-1]) if error.args else "a shard"
        if where not in logged:
            logged.add(where)
            logger.warning("%s is damaged (%s): trained without its unread samples", where, error.args[0])
        return True

    return handler


def _trainable(samples, keep, reference: Reference | None, seen: dict) -> Iterator[Encoded]:
    """The samples training can use, checked without decoding: a safe key, an image, a caption, in
    `keep`, and with `reference`, an ok, finite reference row (its embeddings are attached here, from the
    score file of the sample's shard)."""
    shard, rows = None, None
    for sample in samples:
        key = sample["__key__"]
        extension = image_extension(sample)
        caption = sample.get(CAPTION_EXTENSION, b"").decode("utf-8", errors="replace").strip()
        if not is_safe_key(key) or extension is None or not caption or (keep is not None and key not in keep):
            continue
        image_ref = text_ref = None
        if reference is not None:
            if sample["__url__"] != shard:  # a worker's samples of a shard come together
                shard = sample["__url__"]
                rows = reference.shard(basename(shard))
            row = rows.index.get(key)
            if row is None:
                seen["missing"] += 1
                continue
            # Views: a shard's arrays live while any of its samples is in the buffer (a few shards' worth).
            image_ref, text_ref = rows.image[row], rows.text[row]
        seen["samples"] += 1
        yield key, sample[extension], caption, image_ref, text_ref
