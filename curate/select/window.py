"""The window pass of `curate select`: the index's samples cut into seeded super-batches, memory bounded.

It shuffles at two levels, like a webdataset shuffle buffer: score files are visited in a seeded order and
their kept rows' embeddings gathered until a window of at least `window` super-batches is buffered; the
window is permuted by the same seeded stream and cut into super-batches of B, and the rest (< B) carries
into the next window. So every score file is read once, memory holds about one window of embeddings (plus
the file being read), and each super-batch mixes the shards of its window, never one shard alone unless a
single score file outgrows the window. Only the very last super-batch may be short.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import CurateError
from curate.score.schema import ScoreFolder
from curate.seeds import pass_seed
from curate.select.index import SampleIndex

# A buffered part of a window: aligned columns, row i of each is one sample. `position` is its row in the
# SampleIndex; the embeddings are float16 [n, D]; the learner's are absent without a learner.
Part = dict[str, np.ndarray]


@dataclass
class Embeddings:
    image: np.ndarray  # float16 [n, D], L2-normalised
    text: np.ndarray


@dataclass
class SuperBatch:
    index: int
    key: pa.Array
    shard: pa.Array
    sha256: pa.Array
    reference: Embeddings
    learner: Embeddings | None
    position: np.ndarray  # int64: each sample's row in the SampleIndex (what a global filter scores)

    def __len__(self) -> int:
        return len(self.key)

    @property
    def shards(self) -> int:
        """How many source shards its samples come from."""
        return len(pc.unique(self.shard))


def iter_super_batches(
    index: SampleIndex,
    reference: ScoreFolder,
    learner: ScoreFolder | None,
    size: int,
    seed: int,
    window: int = 8,
    first: int = 0,
) -> Iterator[SuperBatch]:
    """Super-batches of `size` samples in a seeded order, numbered from `first`; the last one holds the
    remainder (< size)."""
    if size < 1 or window < 1:
        raise CurateError(f"super-batch size and window must be positive, got {size} and {window}")
    rng = np.random.default_rng(seed)
    bounds = np.searchsorted(index.file, np.arange(len(reference.files) + 1))  # index is in file order
    buffer: list[Part] = []
    buffered, emitted = 0, first
    for file_id in rng.permutation(len(reference.files)):
        lo, hi = int(bounds[file_id]), int(bounds[file_id + 1])
        if lo == hi:
            continue
        part = {"position": np.arange(lo, hi)}
        part["ref_image"], part["ref_text"] = reference.read_embeddings(file_id, index.row[lo:hi])
        if learner is not None:
            part["learner_image"], part["learner_text"] = _learner_embeddings(index, learner, lo, hi)
        buffer.append(part)
        buffered += hi - lo
        if buffered >= window * size:
            batches, rest = _cut(_concat(buffer), index, size, rng, emitted)
            yield from batches
            emitted += len(batches)
            buffer, buffered = [rest], len(rest["position"])
    if not buffer:
        return
    batches, rest = _cut(_concat(buffer), index, size, rng, emitted)
    yield from batches
    if len(rest["position"]):
        yield _super_batch(emitted + len(batches), rest, index)


def _cut(
    window: Part, index: SampleIndex, size: int, rng: np.random.Generator, first: int
) -> tuple[list[SuperBatch], Part]:
    """Permute the buffered window and cut it into full super-batches; return them and the remainder."""
    order = rng.permutation(len(window["position"]))
    full = len(order) // size
    batches = [
        _super_batch(first + i, _take(window, order[i * size : (i + 1) * size]), index) for i in range(full)
    ]
    return batches, _take(window, order[full * size :])


def _super_batch(number: int, part: Part, index: SampleIndex) -> SuperBatch:
    positions = pa.array(part["position"])
    learner = Embeddings(part["learner_image"], part["learner_text"]) if "learner_image" in part else None
    return SuperBatch(
        number,
        index.key.take(positions),
        index.shard.take(positions),
        index.sha256.take(positions),
        Embeddings(part["ref_image"], part["ref_text"]),
        learner,
        part["position"],
    )


def _concat(parts: list[Part]) -> Part:
    return parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _take(part: Part, order: np.ndarray) -> Part:
    return {k: v[order] for k, v in part.items()}


def _learner_embeddings(
    index: SampleIndex, learner: ScoreFolder, lo: int, hi: int
) -> tuple[np.ndarray, np.ndarray]:
    """The learner's rows for index rows lo:hi, read once per learner file they fall in (usually one: the
    same shard, scored again)."""
    files, rows = index.learner_file[lo:hi], index.learner_row[lo:hi]
    image = np.empty((hi - lo, learner.metadata.embed_dim), np.float16)
    text = np.empty_like(image)
    for file_id in np.unique(files):
        mask = files == file_id
        image[mask], text[mask] = learner.read_embeddings(int(file_id), rows[mask])
    return image, text


@dataclass
class PassCounts:
    """What the passes did, filled in while they run."""

    passes: int = 0  # passes begun
    left_out: int = 0  # samples of the passes' remainders (< B), left out of those passes


def iter_passes(
    index: SampleIndex,
    reference: ScoreFolder,
    learner: ScoreFolder | None,
    size: int,
    seed: int,
    window: int,
    batches: int | None,
    counts: PassCounts,
) -> Iterator[SuperBatch]:
    """`batches` full super-batches from as many seeded passes over the index as they need, numbered on
    across passes; each pass is `iter_super_batches` under its own seed, its remainder left out. None: one
    pass, its short last super-batch included."""
    if batches is None:
        counts.passes = 1
        yield from iter_super_batches(index, reference, learner, size, seed, window)
        return
    if len(index) < size:
        raise CurateError(
            f"{len(index)} eligible samples do not fill one super-batch of {size}: a selection of whole "
            "batches (--steps, --passes) needs at least one"
        )
    made = 0
    while made < batches:
        pass_seed_ = pass_seed(seed, counts.passes)
        counts.passes += 1
        for batch in iter_super_batches(index, reference, learner, size, pass_seed_, window, first=made):
            if len(batch) < size:
                counts.left_out += len(batch)
                continue
            yield batch
            made += 1
            if made == batches:
                return
