"""Training data: one interface (`TrainData`: `batch(step)` and a `DataReport`), four ways to fill it.

What a step draws is global; what a rank gets is its part. `--batch-size b` is the global batch (online
JEST's super-batch B likewise); rank r of W trains positions [r·b/W, (r+1)·b/W) of it. The ranks and the
world size enter here once, through the job's `Group`.

- Memory, uniform (and online JEST's super-batches): the batch of a step is a function of (seed, step)
  alone over the catalogue of decoded samples (cache.py), so a resumed run, or a run under another W,
  sees exactly the batches an uninterrupted one-process run would. Each rank decodes a share of the
  shards and keeps the rows of its part of the steps still to run.
- Memory, a manifest's batches (`--order batches`, order.py): step t trains the plan's batch for t; its
  decodable samples are split over the ranks (a batch short of a multiple of W leaves its last few out,
  counted as `trimmed`).
- Stream, uniform (stream.py, webdataset's pipeline): shards split over (rank, worker); exact on resume
  under the same W and --workers.
- Stream, a manifest's batches: each rank decodes, a few batches ahead, only its part of them.

The cache and the planned stream read with curate's own reader (`ShardBatches`), which counts every
skipped sample by reason into the report; the uniform stream cannot report back from its workers and logs
instead. Under online JEST each sample carries its reference embeddings from the worker that decoded it
(reference.py), and a sample without them is skipped as `no_reference_score`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset

from curate.distributed import Group
from curate.errors import CurateError
from curate.fileio import filesystem, local_path
from curate.jest import selection_size
from curate.models import ImageTextModel
from curate.runtime import Progress
from curate.seeds import epoch_seed
from curate.select.manifest import read_manifest, require_found
from curate.shards.batches import ShardBatch, ShardBatches, already_batched, single_threaded_worker
from curate.shards.paths import count_samples, shard_sibling, shards_by_name
from curate.shards.reader import ReadStats, iter_members
from curate.shards.schema import OK, SUCCESS
from curate.train.batch import Batch
from curate.train.cache import Catalogue, Rows, assemble, decode
from curate.train.config import TrainConfig
from curate.train.order import BatchPlan
from curate.train.reference import NO_REFERENCE, Reference
from curate.train.stream import UniformStream


@dataclass
class DataReport:
    """What the data holds and what decoding met, for the run's summary (merged over ranks by `merge`)."""

    mode: str = "memory"  # or "stream"
    samples: int | None = None  # in the memory cache, over all ranks; None when streaming
    # --order batches: manifest samples not in the data or undecodable (distinct keys in memory; rows
    # trained without, when streaming), and those left out so that a batch splits evenly over the ranks
    missing: int = 0
    trimmed: int = 0
    manifest_batches: int | None = None
    found: tuple[int, int] | None = None  # with a manifest: its distinct keys the data holds, of how many
    skipped: Counter = field(default_factory=Counter)  # samples skipped, by reason
    damaged: dict[str, str] = field(default_factory=dict)  # shard -> why it could not be read whole

    def add(self, batch: ShardBatch) -> None:
        self.skipped.update(status for status in batch.status if status != OK)
        if batch.damage and batch.shard not in self.damaged:  # a plan reads a shard once per group
            self.damaged[batch.shard] = batch.damage
            self.skipped["truncated_tar"] += batch.unread

    @staticmethod
    def merge(reports: list[DataReport]) -> DataReport:
        """The job's report from each rank's: counts summed (the ranks decode disjoint shares), the rest
        as rank 0 has it."""
        first = reports[0]
        skipped: Counter = Counter()
        damaged: dict[str, str] = {}
        for report in reports:
            skipped.update(report.skipped)
            damaged.update(report.damaged)
        return DataReport(
            first.mode,
            first.samples,
            sum(r.missing for r in reports),
            sum(r.trimmed for r in reports),
            first.manifest_batches,
            first.found,
            skipped,
            damaged,
        )


class TrainData(Protocol):
    report: DataReport
    # Whether every rank's batch of a step has the same size by construction (else the loop evens them)
    even: bool

    def batch(self, step: int) -> Batch:
        """This rank's part of the batch (online JEST: the super-batch) of `step`, on the host."""
        ...


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
    group: Group,
    progress: Progress | None = None,
    plan: BatchPlan | None = None,
) -> TrainData:
    """This rank's data for steps [start_step, config.steps).

    `reference` (online JEST): each sample carries its embeddings, and one without them is never drawn (it
    cannot be scored). `plan` (a manifest's batches) fixes what each step trains. Memory or stream as
    --cache says (auto: memory when this node's ranks' shares of the decoded set fit in a quarter of RAM).
    A manifest of which the data holds under 99% is refused (`require_found`: the wrong shards) unless
    --allow-missing: in memory once decoded, when streaming by the shards' tables before any decoding.
    """
    settings, ranks = config.data, group.ranks
    steps = range(start_step, config.steps)
    size = config.super_batch  # the global batch a step draws (B under online JEST)
    ranks.share(size, "--batch-size" if not config.online else "the super-batch b / (1 - ratio)")
    if config.online and ranks.world_size > 1 and config.online.scope == "local":
        online = config.online
        kept = selection_size(size // ranks.world_size, online.ratio, online.chunks)  # one line if too few
        if kept * ranks.world_size != config.batch_size:
            raise CurateError(
                f"--online-scope local: each of {ranks.world_size} processes keeps {kept} of its "
                f"{size // ranks.world_size}, not {config.batch_size}/{ranks.world_size}: choose a "
                "--batch-size whose super-batch b / (1 - ratio) splits into whole parts"
            )
    memory = settings.cache == "memory" or (
        settings.cache == "auto" and fits_in_memory(paths, model.image_size, len(steps) * size, ranks)
    )
    report = DataReport(mode="memory" if memory else "stream")
    if plan is not None:  # never with a reference: the config refuses --order batches under online JEST
        report.manifest_batches = len(plan)
        if memory:
            return PlannedMemoryData(config, paths, model, plan, steps, group, progress, report)
        by_name = shards_by_name(paths, plan.shards, "the training data")
        report.found = _listed(frozenset(plan.keys), list(by_name.values()), settings.allow_missing)
        return PlannedStreamData(
            plan, by_name, model.preprocess, model.tokenizer, steps, settings.workers, ranks, report
        )
    keep = _manifest_keys(settings.manifest) if settings.manifest else None
    if memory:
        return MemoryData(config, paths, model, reference, keep, steps, group, progress, report)
    if keep is not None:
        report.found = _listed(keep, paths, settings.allow_missing)
    stream = UniformStream(
        paths,
        model.preprocess,
        model.tokenizer,
        keep,
        reference,
        settings.shuffle_buffer,
        config.seed,
        size // ranks.world_size,
        start_step,
        ranks,
    )
    return StreamData(stream, settings.workers, report, pin=model.device.type == "cuda")


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


def fits_in_memory(paths: list[str], image_size: int, draws: int, ranks) -> bool:
    """Whether this node's ranks' caches fit in a quarter of its RAM: each holds decoded float16 images
    plus tokens for at most its part of the `draws` still to make, and never more than every sample."""
    samples = count_samples(paths)
    if samples is None:
        return False
    held = min(samples, -(-draws // ranks.world_size)) if ranks.world_size > 1 else samples
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return ranks.local_world_size * held * (3 * image_size * image_size * 2 + 512) < ram // 4


class EpochOrder:
    """Positions of an endless sequence of epochs over `n` rows, each epoch a fresh permutation seeded by
    (seed, epoch): step t of a batch of `size` draws positions [t·size, (t+1)·size)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._permutation: tuple[int, torch.Tensor] | None = None  # the last epoch's, kept

    def rows(self, positions: torch.Tensor) -> torch.Tensor:
        epochs = positions // self.n
        out = torch.empty(len(positions), dtype=torch.long)
        for epoch in epochs.unique().tolist():
            mask = epochs == epoch
            out[mask] = self._epoch(epoch)[positions[mask] % self.n]
        return out

    def positions(self, step: int, size: int, part: slice) -> torch.Tensor:
        return torch.arange(step * size + part.start, step * size + part.stop)

    def needed(self, steps: range, size: int, part: slice) -> torch.Tensor:
        """The sorted rows `part` of the batches of `steps` draws: every row once they span an epoch."""
        per_step = part.stop - part.start
        if len(steps) * per_step >= self.n:
            return torch.arange(self.n)
        if not steps:  # a finished run resumed: nothing left to draw
            return torch.zeros(0, dtype=torch.long)
        positions = torch.cat([self.positions(step, size, part) for step in steps])
        return self.rows(positions).unique()

    def _epoch(self, epoch: int) -> torch.Tensor:
        if self._permutation is None or self._permutation[0] != epoch:
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            self._permutation = (epoch, torch.randperm(self.n, generator=generator))
        return self._permutation[1]


def _decode_share(
    config: TrainConfig,
    paths: list[str],
    share: list[str],
    model: ImageTextModel,
    reference: Reference | None,
    keep: frozenset[str] | None,
    group: Group,
    progress: Progress | None,
    report: DataReport,
) -> tuple[Rows, Catalogue, set[str]]:
    """Decode this rank's `share` of `paths` (only `keep`'s keys), then agree with the other ranks on the
    catalogue of what every rank decoded. Also returns the keys the tars held, decodable or not, over all
    ranks."""
    read: set[str] = set()

    def heard(batch: ShardBatch) -> None:
        report.add(batch)
        read.update(batch.keys)

    decoded, shards = decode(
        share, model.preprocess, model.tokenizer, keep, config.data.workers, reference, progress, heard
    )
    catalogue = Catalogue.gather(group, paths, shards, decoded.keys)
    if group.ranks.world_size > 1:
        read = set().union(*group.gather_objects(read))
    return decoded, catalogue, read


def _require_samples(catalogue: Catalogue, config: TrainConfig, group: Group, report: DataReport) -> None:
    """One line when no rank decoded anything (every rank finds it at once: they share the catalogue)."""
    if len(catalogue):
        return
    unscored = sum(skipped[NO_REFERENCE] for skipped in group.gather_objects(report.skipped))
    where = ", ".join(config.data.paths[:3]) + (" ..." if len(config.data.paths) > 3 else "")
    if unscored:
        raise CurateError(
            f"no sample of {where} has a reference score: do --ref and the data hold the same keys?"
        )
    raise CurateError(f"no trainable samples in {where}")


class MemoryData:
    """Uniform batches from the memory cache: the rows of a step are a function of (seed, step) over the
    catalogue, and this rank holds the rows of its part of the steps it will run."""

    even = True

    def __init__(
        self,
        config: TrainConfig,
        paths: list[str],
        model: ImageTextModel,
        reference: Reference | None,
        keep: frozenset[str] | None,
        steps: range,
        group: Group,
        progress: Progress | None,
        report: DataReport,
    ):
        ranks = group.ranks
        share = paths[ranks.rank :: ranks.world_size]  # each rank decodes its own shards
        decoded, catalogue, read = _decode_share(
            config, paths, share, model, reference, keep, group, progress, report
        )
        if keep is not None:
            report.found = _found(len(read), len(keep), config.data.allow_missing)
        _require_samples(catalogue, config, group, report)
        self.size, self.part = config.super_batch, ranks.part(config.super_batch)
        self.order = EpochOrder(len(catalogue), config.seed)
        held = self.order.needed(steps, self.size, self.part)
        self.rows = assemble(group, catalogue, decoded, held)
        self._local = torch.full((len(catalogue),), -1, dtype=torch.long)
        self._local[held] = torch.arange(len(held))
        self.report = report
        report.samples = len(catalogue)

    def batch(self, step: int) -> Batch:
        rows = self.rows.take(self._local[self.order.rows(self.order.positions(step, self.size, self.part))])
        return Batch(rows.images, rows.tokens, rows.keys, rows.reference)


class PlannedMemoryData:
    """A manifest's batches from the memory cache: step t trains this rank's part of the plan's batch for
    t, of the samples of it that decoded (evened over the ranks)."""

    even = True

    def __init__(
        self,
        config: TrainConfig,
        paths: list[str],
        model: ImageTextModel,
        plan: BatchPlan,
        steps: range,
        group: Group,
        progress: Progress | None,
        report: DataReport,
    ):
        ranks, self.plan, self.report = group.ranks, plan, report
        batches = sorted({plan.locate(step)[0] for step in steps})
        # Decoded where it will most likely train: rank r decodes the keys at its part of each batch.
        mine = frozenset(
            key for batch in batches for key in _part(plan.keys_of(batch), ranks.rank, ranks.world_size)
        )
        # The manifest as a whole, by the shards' tables, before any decoding (as the stream checks it)
        every = shards_by_name(paths, plan.shards, "the training data")
        report.found = _listed(frozenset(plan.keys), list(every.values()), config.data.allow_missing)
        used = {every[plan.shards[row]] for batch in batches for row in plan.rows(batch)}
        wanted = [path for path in paths if path in used]
        decoded, catalogue, _ = _decode_share(
            config, wanted, wanted, model, None, mine, group, progress, report
        )
        wanted_keys = {key for batch in batches for key in plan.keys_of(batch)}
        _require_samples(catalogue, config, group, report)
        index: dict[str, int] = {}
        for row, key in enumerate(catalogue.keys):
            index.setdefault(key, row)
        self._parts: dict[int, torch.Tensor] = {}
        self._trimmed: dict[int, int] = {}
        for batch in batches:
            rows = [index[key] for key in plan.keys_of(batch) if key in index]
            if not rows:
                raise CurateError(f"batch {batch} of the manifest has no sample that could be decoded")
            even = len(rows) - len(rows) % ranks.world_size
            if not even:
                raise CurateError(
                    f"batch {batch} of the manifest has {len(rows)} decodable samples, fewer than the "
                    f"{ranks.world_size} processes"
                )
            self._trimmed[batch] = len(rows) - even
            self._parts[batch] = torch.tensor(rows[:even][ranks.part(even)], dtype=torch.long)
        held = torch.cat([torch.zeros(0, dtype=torch.long), *self._parts.values()]).unique()
        self.rows = assemble(group, catalogue, decoded, held)
        self._local = torch.full((len(catalogue),), -1, dtype=torch.long)
        self._local[held] = torch.arange(len(held))
        self._main = ranks.main
        if ranks.main:  # global counts: rank 0 reports them for the job
            report.missing = len(wanted_keys - index.keys())
        report.samples = len(catalogue)

    def batch(self, step: int) -> Batch:
        batch, _ = self.plan.locate(step)
        if self._main:
            self.report.trimmed += self._trimmed[batch]
        rows = self.rows.take(self._local[self._parts[batch]])
        return Batch(rows.images, rows.tokens, rows.keys)


def _part(items: list, rank: int, world_size: int) -> list:
    """Rank `rank`'s part of `items` split over `world_size` as evenly as they go (sizes differ by one)."""
    n = len(items)
    return items[rank * n // world_size : (rank + 1) * n // world_size]


class StreamData:
    """Batches of the uniform stream (stream.py) from a DataLoader whose workers batch them."""

    even = True

    def __init__(self, stream: UniformStream, workers: int, report: DataReport, pin: bool = False):
        loader = DataLoader(
            stream,
            batch_size=None,  # the workers batch: only whole batches cross processes
            num_workers=workers,
            worker_init_fn=single_threaded_worker,
            collate_fn=already_batched,
            pin_memory=pin,  # page-locked, so that the copy to a GPU does not wait for the host
        )
        self._batches = iter(loader)
        self.report = report

    def batch(self, step: int) -> Batch:
        """The next batch of the stream (`step` is the caller's: the stream knows where it is)."""
        return next(self._batches)


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
    """A manifest's batches streamed from the tars, for plans whose samples do not fit in memory: each rank
    decodes only its part of each batch (the ranks' parts of a batch with undecodable samples may then
    differ in size: the loop evens them).

    Memory holds the decoded samples of one group of steps (at most LOOKAHEAD_BATCHES batches or about
    LOOKAHEAD_SAMPLES samples), plus what the DataLoader's workers prefetch of the next group.
    """

    even = False

    def __init__(
        self,
        plan: BatchPlan,
        paths,
        preprocess,
        tokenizer,
        steps: range,
        workers: int,
        ranks,
        report: DataReport,
    ):
        self.plan, self.report, self.ranks = plan, report, ranks
        per_group = max(1, min(LOOKAHEAD_BATCHES, LOOKAHEAD_SAMPLES // max(1, plan.batch_size)))
        self._groups = [steps[i : i + per_group] for i in range(0, len(steps), per_group)]
        needs = []
        for group in self._groups:
            rows = [row for step in group for row in self._part(plan.rows(plan.locate(step)[0]))]
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

    def _part(self, items):
        return _part(list(items), self.ranks.rank, self.ranks.world_size)

    def batch(self, step: int) -> Batch:
        number = self._group_of[step]
        if self._loaded is None or self._loaded[0] != number:
            self._loaded = (number, self._load(number))
        samples = self._loaded[1]
        batch, _ = self.plan.locate(step)
        keys = self._part(self.plan.keys_of(batch))
        found = [key for key in keys if key in samples]
        self.report.missing += len(keys) - len(found)
        if not found and self.ranks.world_size == 1:
            raise CurateError(f"batch {batch} of the manifest has no sample that could be decoded")
        images = (
            torch.stack([samples[key][0] for key in found]) if found else torch.zeros(0, dtype=torch.float16)
        )
        tokens = (
            torch.stack([samples[key][1] for key in found]) if found else torch.zeros(0, dtype=torch.long)
        )
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
            self.report.add(batch)
            ok = [i for i, status in enumerate(batch.status) if status == OK]
            for row, i in enumerate(ok):
                samples[batch.keys[i]] = (batch.images[row].half(), batch.tokens[row])
        return samples
