"""Training data: a decoded in-memory cache when it fits (the demo's case), else streaming from tars.

Two orders. Uniform (no manifest, or `--order shuffle`): the cache gives the batch of a step as a function
of (seed, step) alone, so a resumed run sees exactly the batches an uninterrupted one would; the stream
(stream.py, webdataset's pipeline) replays its seeded order up to the step it resumes at, so it is exact
too. A manifest's batches (`--order batches`, order.py): step t trains the plan's batch for t, from the
cache or from a stream that decodes, a few batches ahead, only the shards those batches live in; both are
exact on resume, because the plan is a function of the step.

The cache and the planned stream read with curate's own reader (`ShardBatches`), which counts every
skipped sample by reason into the run's summary; the uniform stream cannot report back from its workers and
logs instead. Under online JEST each sample carries its reference embeddings from the worker that decoded
it (reference.py), and a sample without them is skipped as `no_reference_score`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset

from curate.errors import CurateError
from curate.fileio import filesystem, local_path
from curate.models import ImageTextModel
from curate.runtime import Progress
from curate.select.manifest import read_manifest, require_found
from curate.shards.batches import ShardBatch, ShardBatches, already_batched, single_threaded_worker
from curate.shards.paths import count_samples, shard_sibling, shards_by_name
from curate.shards.reader import ReadStats, iter_members
from curate.shards.schema import OK, SUCCESS
from curate.train.batch import Batch
from curate.train.config import TrainConfig
from curate.train.order import BatchPlan
from curate.train.reference import NO_REFERENCE, Reference, with_reference
from curate.train.stream import UniformStream


def load_plan(manifest: str, seed: int) -> BatchPlan:
    """The batches of a `curate select` manifest, in training order."""
    table = read_manifest(local_path(manifest, "--manifest"), ["key", "shard", "batch"])  # one-line errors
    return BatchPlan.from_manifest(table, seed, manifest)


def make_data(
    config: TrainConfig,
    paths: list[str],
    model: ImageTextModel,
    reference: Reference | None,
    start_step: int,
    progress: Progress | None = None,
    plan: BatchPlan | None = None,
    report: DecodeReport | None = None,
) -> tuple[TrainData, tuple[int, int] | None]:
    """The run's data and, with a manifest, how many of its distinct keys the data holds, of how many.

    `reference` (online JEST): each sample carries its embeddings, and one without them is never drawn (it
    cannot be scored). `plan` (a manifest's batches) fixes what each step trains. Memory or stream as
    --cache says (auto: memory when the decoded set fits in a quarter of RAM). A manifest of which the data
    holds under 99% is refused (`require_found`: the wrong shards) unless --allow-missing: in memory once
    decoded, when streaming by the shards' tables before any decoding. `report` hears of the samples
    skipped and the shards damaged as they are decoded (in this process: not by the uniform stream's
    workers, which log them).
    """
    settings = config.data
    memory = settings.cache == "memory" or (
        settings.cache == "auto" and fits_in_memory(paths, model.image_size)
    )
    if plan is not None:  # never with a reference: the config refuses --order batches under online JEST
        if memory:
            keys = frozenset(plan.keys)
            cache, found = _load_manifest_samples(config, paths, model, keys, None, progress, report)
            return PlannedMemoryData(cache, plan), found
        by_name = shards_by_name(paths, plan.shards, "the training data")
        found = _listed(frozenset(plan.keys), list(by_name.values()), settings.allow_missing)
        steps = range(start_step, config.steps)
        stream = PlannedStreamData(
            plan, by_name, model.preprocess, model.tokenizer, steps, settings.workers, report
        )
        return stream, found
    manifest = _manifest_keys(settings.manifest) if settings.manifest else None
    if memory:
        if manifest is not None:
            return _load_manifest_samples(config, paths, model, manifest, reference, progress, report)
        data = load_memory_data(
            paths,
            model.preprocess,
            model.tokenizer,
            None,
            settings.workers,
            config.seed,
            progress,
            report,
            reference=reference,
        )
        return data, None
    found = _listed(manifest, paths, settings.allow_missing) if manifest is not None else None
    stream = UniformStream(
        paths,
        model.preprocess,
        model.tokenizer,
        manifest,
        reference,
        settings.shuffle_buffer,
        config.seed,
        config.super_batch,
        start_step,
    )
    return StreamData(stream, settings.workers, pin=_on_cuda(model)), found


def _on_cuda(model: ImageTextModel) -> bool:
    return next(model.module.parameters()).is_cuda


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
    reference: Reference | None,
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
            reference,
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


class MemoryData:
    """Every kept sample decoded once into one float16 tensor; batches are indexed by a seeded permutation.
    Under online JEST it holds each sample's reference embeddings too ((N, D) float16 each)."""

    def __init__(
        self,
        images: torch.Tensor,
        tokens: torch.Tensor,
        keys: list[str],
        seed: int,
        reference: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        self.images, self.tokens, self.keys, self.seed = images, tokens, keys, seed
        self.reference = reference
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
        reference = None if self.reference is None else (self.reference[0][rows], self.reference[1][rows])
        return Batch(self.images[rows], self.tokens[rows], [self.keys[i] for i in rows.tolist()], reference)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._permutations:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._permutations = {epoch: torch.randperm(len(self), generator=generator)}  # keep one epoch
        return self._permutations[epoch]


class ReferencedBatches(IterableDataset):
    """`ShardBatches` whose batches carry their decoded samples' reference embeddings: items are (batch,
    (image, text) embeddings of its decoded samples); a decoded sample without a reference row is marked
    NO_REFERENCE and dropped. Each worker reads the score file of the shard it decodes, once."""

    def __init__(self, batches: ShardBatches, reference: Reference):
        self.batches, self.reference = batches, reference

    def __iter__(self) -> Iterator[tuple[ShardBatch, tuple[torch.Tensor, torch.Tensor]]]:
        shard, rows = None, None
        for batch in self.batches:  # ShardBatches shares the shards out among the workers itself
            if batch.shard != shard:  # a worker's batches of a shard come together
                shard, rows = batch.shard, self.reference.shard(batch.shard)
            yield with_reference(batch, rows)


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
    reference: Reference | None = None,
) -> MemoryData:
    """The samples of `paths` (only `keep`'s keys, when given) decoded into memory; `read` collects every
    key the tars held, decodable or not, and `report` what could not be decoded (or, with `reference`, had
    no reference row: those are left out)."""
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
    images, tokens, keys, embeddings = [], [], [], []
    total, seen = count_samples(paths), 0
    for item in loader:
        batch, rows = item if reference is not None else (item, None)
        ok = [i for i, status in enumerate(batch.status) if status == OK]
        if ok:
            images.append(batch.images.half())  # half the memory; values are normalised pixels, well in range
            tokens.append(batch.tokens)
            keys += [batch.keys[i] for i in ok]
            embeddings.append(rows)
        seen += len(batch.keys)
        if read is not None:
            read.update(batch.keys)
        if report is not None:
            report.add(batch)
        if progress:
            progress(seen, total)
    if not keys:
        where = f"{', '.join(paths[:3])}{' ...' if len(paths) > 3 else ''}"
        if reference is not None and report is not None and report.skipped[NO_REFERENCE]:
            raise CurateError(
                f"no sample of {where} has a reference score: do --ref and the data hold the same keys?"
            )
        raise CurateError(f"no trainable samples in {where}")
    stacked = None
    if reference is not None:
        stacked = (torch.cat([e[0] for e in embeddings]), torch.cat([e[1] for e in embeddings]))
    return MemoryData(torch.cat(images), torch.cat(tokens), keys, seed, stacked)


def fits_in_memory(paths: list[str], image_size: int) -> bool:
    """Decoded float16 images plus tokens under a quarter of this machine's RAM (unknown size: stream)."""
    samples = count_samples(paths)
    if samples is None:
        return False
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return samples * (3 * image_size * image_size * 2 + 512) < ram // 4


class StreamData:
    """Batches of the uniform stream (stream.py) from a DataLoader whose workers batch them."""

    def __init__(self, stream: UniformStream, workers: int, pin: bool = False):
        loader = DataLoader(
            stream,
            batch_size=None,  # the workers batch: only whole batches cross processes
            num_workers=workers,
            worker_init_fn=single_threaded_worker,
            collate_fn=already_batched,
            pin_memory=pin,  # page-locked, so that the copy to a GPU does not wait for the host
        )
        self._batches = iter(loader)

    def batch(self, step: int, size: int) -> Batch:
        """The next batch of the stream (of the size it was made with; `step` is for MemoryData's sake)."""
        return next(self._batches)


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
