"""Training data: a decoded in-memory cache when it fits (the demo's case), else streaming from tars.

Two orders. Uniform (no manifest, or `--order shuffle`): the cache gives the batch of a step as a function
of (seed, step) alone, so a resumed run sees exactly the batches an uninterrupted one would; the stream
re-seeds from the step it resumes at, so a resumed stream sees other (equally shuffled) batches. A
manifest's batches (`--order batches`, order.py): step t trains the plan's batch for t, from the cache or
from a stream that decodes, a few batches ahead, only the shards those batches live in; both are exact on
resume, because the plan is a function of the step.
"""

from __future__ import annotations

import logging
import os
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from curate.errors import CurateError
from curate.fileio import filesystem, local_path
from curate.models import ImageTextModel
from curate.runtime import Progress
from curate.select.manifest import read_manifest, require_found
from curate.shards.batches import ShardBatch, ShardBatches, already_batched, single_threaded_worker
from curate.shards.paths import count_samples, shard_sibling, shards_by_name
from curate.shards.reader import ReadStats, iter_members
from curate.shards.schema import OK, SUCCESS
from curate.train.config import TrainConfig
from curate.train.order import BatchPlan

logger = logging.getLogger(__name__)


def load_plan(manifest: str, seed: int) -> BatchPlan:
    """The batches of a `curate select` manifest, in training order."""
    table = read_manifest(local_path(manifest, "--manifest"), ["key", "shard", "batch"])  # one-line errors
    return BatchPlan.from_manifest(table, seed, manifest)


def make_data(
    config: TrainConfig,
    paths: list[str],
    model: ImageTextModel,
    referenced: dict[str, int] | None,
    start_step: int,
    progress: Progress | None = None,
    plan: BatchPlan | None = None,
    report: DecodeReport | None = None,
) -> tuple[TrainData, int, tuple[int, int] | None]:
    """The run's data, how many of its samples were left out for want of a reference score, and, with a
    manifest, how many of its distinct keys the data holds, of how many.

    `referenced` (online JEST) holds the keys that have one: the others cannot be scored, so they are never
    drawn. `plan` (a manifest's batches) fixes what each step trains. Memory or stream as --cache says
    (auto: memory when the decoded set fits in a quarter of RAM). A manifest of which the data holds under
    99% is refused (`require_found`: the wrong shards) unless --allow-missing: in memory once decoded, when
    streaming by the shards' tables before any decoding. `report` hears of the samples skipped and the
    shards damaged as they are decoded (in this process: not by a plain stream's workers, which log them).
    """
    settings = config.data
    memory = settings.cache == "memory" or (
        settings.cache == "auto" and fits_in_memory(paths, model.image_size)
    )
    if plan is not None:
        if memory:
            keys = frozenset(plan.keys)
            cache, found = _load_manifest_samples(config, paths, model, keys, progress, report)
            return PlannedMemoryData(cache, plan), 0, found
        by_name = shards_by_name(paths, plan.shards, "the training data")
        found = _listed(frozenset(plan.keys), list(by_name.values()), settings.allow_missing)
        steps = range(start_step, config.steps)
        stream = PlannedStreamData(
            plan, by_name, model.preprocess, model.tokenizer, steps, settings.workers, report
        )
        return stream, 0, found
    manifest = _manifest_keys(settings.manifest) if settings.manifest else None
    found = None
    if memory:
        if manifest is not None:
            data, found = _load_manifest_samples(config, paths, model, manifest, progress, report)
        else:
            data = load_memory_data(
                paths,
                model.preprocess,
                model.tokenizer,
                None,
                settings.workers,
                config.seed,
                progress,
                report,
            )
        if referenced is None:
            return data, 0, found
        kept = data.only(referenced)
        if not len(kept):
            raise CurateError(
                "no training sample has a reference score: do --ref and the data hold the same keys?"
            )
        return kept, len(data) - len(kept), found
    keep = manifest
    if manifest is not None:
        found = _listed(manifest, paths, settings.allow_missing)
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
    return stream, 0, found


def _manifest_keys(manifest: str) -> frozenset[str]:
    table = read_manifest(local_path(manifest, "--manifest"), ["key"])  # schema-checked: one-line errors
    return frozenset(table.column("key").to_pylist())


def _found(found: int, wanted: int, allow_missing: bool) -> tuple[int, int]:
    require_found(found, wanted, allow_missing, "train --manifest")
    return found, wanted


def _listed(manifest: frozenset[str], shards: list[str], allow_missing: bool) -> tuple[int, int]:
    """How many of the manifest's keys the shards hold, by their tables, refused below MIN_FOUND unless
    --allow-missing: a stream meets the keys a batch at a time, a whole pass later, so it counts up front."""
    return _found(len(manifest & keys_in_shards(shards)), len(manifest), allow_missing)


def _load_manifest_samples(
    config: TrainConfig,
    paths: list[str],
    model: ImageTextModel,
    manifest: frozenset[str],
    progress: Progress | None,
    report: DecodeReport | None,
) -> tuple[MemoryData, tuple[int, int]]:
    """The manifest's samples decoded into memory, and how many of its keys the tars held (decodable or
    not), refused below MIN_FOUND unless --allow-missing."""
    settings, read = config.data, set()
    try:
        data = load_memory_data(
            paths,
            model.preprocess,
            model.tokenizer,
            manifest,
            settings.workers,
            config.seed,
            progress,
            report,
            read,
        )
    except CurateError:  # nothing decoded: the wrong shards, if so few of the manifest's keys were there
        _found(len(read), len(manifest), settings.allow_missing)
        raise
    return data, _found(len(read), len(manifest), settings.allow_missing)


def keys_in_shards(paths: list[str]) -> set[str]:
    """Every key the shards' tars hold, without reading an image: from each shard's parquet (img2dataset's
    table of its rows: the `success` ones are in the tar), else from the tar's member names."""
    keys: set[str] = set()
    for path in paths:
        fs, table_path = filesystem(shard_sibling(path, ".parquet"))
        try:
            with fs.open(table_path, "rb") as handle:
                names = pq.read_schema(handle).names
                table = pq.read_table(handle, columns=[c for c in ("key", "status") if c in names])
            if "status" in names:
                table = table.filter(pc.equal(table["status"], SUCCESS))
            keys.update(table["key"].to_pylist())
        except (OSError, KeyError, pa.ArrowException):  # no table, or not img2dataset's: read the tar
            keys.update(key for key, _ in iter_members(path, ReadStats()))  # up to any damage, as decoding
    return keys


@dataclass
class DecodeReport:
    """What decoding the training data met: samples skipped by reason, and the shards that could not be
    read whole (a damaged tar's unread samples count as `truncated_tar`)."""

    skipped: Counter = field(default_factory=Counter)
    damaged: dict[str, str] = field(default_factory=dict)  # shard -> why

    def add(self, batch: ShardBatch) -> None:
        self.skipped.update(status for status in batch.status if status != OK)
        if batch.damage and batch.shard not in self.damaged:  # a plan reads a shard once per group
            self.damaged[batch.shard] = batch.damage
            self.skipped["truncated_tar"] += batch.unread


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
    report: DecodeReport | None = None,
    read: set[str] | None = None,
) -> MemoryData:
    """The samples of `paths` (only `keep`'s keys, when given) decoded into memory; `read` collects every
    key the tars held, decodable or not, and `report` what could not be decoded."""
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
        if read is not None:
            read.update(batch.keys)
        if report is not None:
            report.add(batch)
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
                if batch.damage and epoch == 0:  # a worker has no way back to the summary but the log
                    logger.warning(
                        "%s is damaged (%s): trained without its unread samples", batch.shard, batch.damage
                    )
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


class PlannedMemoryData:
    """A manifest's batches from the in-memory cache: step t trains the plan's batch for t."""

    def __init__(self, cache: MemoryData, plan: BatchPlan):
        self.cache, self.plan = cache, plan
        self._row = {key: row for row, key in enumerate(cache.keys)}
        self.missing = len(set(plan.keys) - self._row.keys())  # manifest keys absent or undecodable

    def __len__(self) -> int:
        return len(self.cache)

    def batch(self, step: int, size: int) -> Batch:
        """The plan's batch for `step` (`size` is the plan's; kept for the uniform data's signature)."""
        batch, _ = self.plan.locate(step)
        rows = [self._row[key] for key in self.plan.keys_of(batch) if key in self._row]
        if not rows:
            raise CurateError(f"batch {batch} of the manifest has no sample that could be decoded")
        return self.cache.take(torch.tensor(rows, dtype=torch.long))


# The streaming plan decodes this many batches at a time (fewer for big batches): select draws a window of
# 8 super-batches from the same few score files, so 8 consecutive batches mostly live in the same shards.
LOOKAHEAD_BATCHES = 8
LOOKAHEAD_SAMPLES = 8192


class PlannedSamples(IterableDataset):
    """The decoded samples of a plan's steps, group by group: each group is a few consecutive steps, and for
    it every worker decodes its share of the shards those steps' keys live in (only those keys), then says
    it is done with the group. Items are (group, ShardBatch), and (group, None) for done."""

    def __init__(self, groups, paths: dict[str, str], preprocess, tokenizer):
        self.groups, self.paths, self.preprocess, self.tokenizer = groups, paths, preprocess, tokenizer

    def __iter__(self) -> Iterator[tuple[int, object]]:
        for number, (shards, keys) in enumerate(self.groups):
            # ShardBatches gives each DataLoader worker its own share of `shards`.
            decoded = ShardBatches([self.paths[s] for s in shards], self.preprocess, self.tokenizer, 64, keys)
            for batch in decoded:
                yield number, batch
            yield number, None


class PlannedStreamData:
    """A manifest's batches streamed from the tars, for plans whose samples do not fit in memory.

    Memory holds the decoded samples of one group of steps (at most LOOKAHEAD_BATCHES batches or about
    LOOKAHEAD_SAMPLES samples), plus what the DataLoader's workers prefetch of the next group.
    """

    def __init__(
        self,
        plan: BatchPlan,
        paths,
        preprocess,
        tokenizer,
        steps: range,
        workers: int,
        report: DecodeReport | None = None,
    ):
        self.plan, self.report = plan, report
        self.missing = 0  # manifest rows that were not found or did not decode, counted as they come
        per_group = max(1, min(LOOKAHEAD_BATCHES, LOOKAHEAD_SAMPLES // max(1, plan.batch_size)))
        self._groups = [steps[i : i + per_group] for i in range(0, len(steps), per_group)]
        needs = []
        for group in self._groups:
            batches = [plan.locate(step)[0] for step in group]
            rows = [row for batch in batches for row in plan.rows(batch)]
            needs.append((sorted({plan.shards[r] for r in rows}), frozenset(plan.keys[r] for r in rows)))
        self._workers = max(1, workers)
        loader = DataLoader(
            PlannedSamples(needs, paths, preprocess, tokenizer),
            batch_size=None,
            num_workers=workers,
            worker_init_fn=single_threaded_worker,
            collate_fn=already_batched,
        )
        self._items = iter(loader)
        self._group_of = {step: number for number, group in enumerate(self._groups) for step in group}
        self._loaded: tuple[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] | None = None
        self._early: dict[int, list] = {}  # items of a later group that arrived before this one was done

    def batch(self, step: int, size: int) -> Batch:
        number = self._group_of[step]
        if self._loaded is None or self._loaded[0] != number:
            self._loaded = (number, self._load(number))
        samples = self._loaded[1]
        batch, _ = self.plan.locate(step)
        keys = self.plan.keys_of(batch)
        found = [key for key in keys if key in samples]
        self.missing += len(keys) - len(found)
        if not found:
            raise CurateError(f"batch {batch} of the manifest has no sample that could be decoded")
        images = torch.stack([samples[key][0] for key in found])
        tokens = torch.stack([samples[key][1] for key in found])
        return Batch(images, tokens, found)

    def _load(self, number: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Every sample of group `number`, once each worker has said it is done with the group. Workers
        go through the groups in order, so the items of a later group can only be early, never late."""
        samples: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        done = 0
        items = self._early.pop(number, [])
        while done < self._workers:
            group, batch = items.pop(0) if items else next(self._items)
            if group != number:
                self._early.setdefault(group, []).append((group, batch))
                continue
            if batch is None:
                done += 1
                continue
            if self.report is not None:
                self.report.add(batch)
            ok = [i for i, status in enumerate(batch.status) if status == OK]
            for row, i in enumerate(ok):
                samples[batch.keys[i]] = (batch.images[row].half(), batch.tokens[row])
        return samples


TrainData = MemoryData | StreamData | PlannedMemoryData | PlannedStreamData
