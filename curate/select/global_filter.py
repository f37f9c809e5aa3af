"""The offline filters of `curate select` (`clipscore`, `negclip`): one score per eligible sample, the top
(1 − F) of the whole crawl kept, then batches cut from seeded shuffles of the kept set.

JEST and its per-super-batch baselines keep a share of each super-batch; these keep a share of the crawl,
a quantile threshold over every eligible sample, as DataComp's filters do. k = round((1 − F) · N), ties
broken by key so the kept set is a function of the scores alone. That exact top share is what a single
partition keeps. Several partitions (select/plan.py) each score their own samples and send a histogram
(select/sketch.py); each then keeps its samples at or above the merged histogram's threshold bin, so
the kept count exceeds k by less than that bin's samples. Batches are cut per partition, numbered
k, k + P, k + 2P, ... in partition k of P, so training order interleaves the partitions.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from curate.errors import CurateError
from curate.jest.negclip import batch_logsumexp, diagonal_logits
from curate.runtime import Progress
from curate.score.schema import ScoreFolder
from curate.seeds import negclip_pass_seed, shuffle_seed
from curate.select.config import SelectConfig
from curate.select.index import SampleIndex
from curate.select.manifest import MANIFEST_SCHEMA
from curate.select.sketch import bin_floor, score_bins
from curate.select.superbatch import pair_embeddings
from curate.select.window import Embeddings, PassCounts, iter_super_batches

NEGCLIP_BATCHES = 10  # K: random batches per sample whose mean logsumexp is its correction R_i (the paper's)
SCORE_NAMES = {"clipscore": "similarity", "negclip": "negCLIPLoss"}


@dataclass
class FilterResult:
    """What a global filter did, for summary.json and the CLI's last line."""

    method: str
    score: str  # what it ranks by
    eligible: int
    kept: int
    threshold: float  # the k-th (lowest kept) score
    batches: int = 0
    random_batches: int = 0  # negclip: K random batches per sample, each a super-batch of about B
    random_batch_size: int = 0


def global_filter(
    index: SampleIndex,
    reference: ScoreFolder,
    config: SelectConfig,
    counts: PassCounts,
    device: torch.device | None = None,
    progress: Progress | None = None,
    threshold: int | None = None,
    partition: tuple[int, int] = (0, 1),
) -> tuple[FilterResult, Iterator[pa.Table]]:
    """Score and keep now (so a bad selection fails before anything is written); return what was kept and
    the manifest rows, one table per pass in batch order, made as they are written. `threshold` None keeps
    the exact top share of `index`; a sketch bin keeps every sample in it or above (one partition of many).
    `partition` (k, P) numbers the batches k, k + P, ..."""
    scores = filter_scores(index, reference, config, device, progress)
    if threshold is None:
        kept, lowest = keep_top(index.key, scores, config.ratio, config.method)
    else:
        kept, lowest = np.flatnonzero(score_bins(scores) >= threshold), bin_floor(threshold)
    result = FilterResult(config.method, SCORE_NAMES[config.method], len(index), len(kept), lowest)
    if config.method == "negclip":
        result.random_batches, result.random_batch_size = NEGCLIP_BATCHES, min(config.super_batch, len(index))
    result.batches = _batch_count(len(kept), config)
    tables = _batch_tables(index, kept, scores.astype(np.float32), config, result.batches, counts, partition)
    return result, tables


def filter_scores(
    index: SampleIndex,
    reference: ScoreFolder,
    config: SelectConfig,
    device: torch.device | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """Each eligible sample's score by --method (clipscore or negclip), in index order."""
    if config.method == "clipscore":
        return clipscore_scores(index, reference)
    return negclip_scores(index, reference, config, device or torch.device("cpu"), progress)


def clipscore_scores(index: SampleIndex, reference: ScoreFolder) -> np.ndarray:
    """Each eligible sample's `similarity` column (DataComp's CLIP score), in index order."""
    scores = np.empty(len(index), np.float32)
    for file_id, lo, hi in _file_ranges(index, reference):
        scores[lo:hi] = reference.read_similarity(file_id, index.row[lo:hi])
    return scores


def negclip_scores(
    index: SampleIndex,
    reference: ScoreFolder,
    config: SelectConfig,
    device: torch.device,
    progress: Progress | None = None,
) -> np.ndarray:
    """negCLIPLoss_i = t s_ii − R_i (float64, index order), R_i the mean of ½(row + column logsumexp) of
    t X Yᵀ over the K random batches holding i: the super-batches of K seeded passes, each sample in
    exactly one per pass. Memory: one window of embeddings and O(N) accumulators."""
    total = np.zeros(len(index), np.float64)
    diagonal = np.zeros(len(index), np.float64)
    per_pass = max(1, len(index) // config.super_batch)  # the short tail merges into the one before
    done = 0
    for number in range(NEGCLIP_BATCHES):
        for position, embeddings in random_batches(index, reference, config, number):
            pair = pair_embeddings(embeddings, reference.metadata, device)
            # One host sync per super-batch: the accumulators are indexed by position, on the host.
            total[position] += batch_logsumexp(pair).double().cpu().numpy()
            diagonal[position] = diagonal_logits(pair).double().cpu().numpy()  # the same every pass
            done += 1
            if progress:
                progress(done, NEGCLIP_BATCHES * per_pass)
    return diagonal - total / NEGCLIP_BATCHES


def random_batches(
    index: SampleIndex, reference: ScoreFolder, config: SelectConfig, number: int
) -> Iterator[tuple[np.ndarray, Embeddings]]:
    """negclip pass `number`'s random batches: the super-batches of `iter_super_batches` under the pass's
    seed, as (index positions, reference embeddings). The short last one (the remainder, < B) is merged
    into the one before: a batch of a few samples would give its members a logsumexp over a few partners,
    far below every other batch's, and so an inflated score. So every batch holds B to 2B − 1 samples
    (all N when N < B)."""
    size, seed = config.super_batch, negclip_pass_seed(config.seed, number)
    held: tuple[np.ndarray, Embeddings] | None = None
    for batch in iter_super_batches(index, reference, None, size, seed, config.window):
        current = (batch.position, batch.reference)
        if held is not None and len(batch) < size:  # only the last super-batch of a pass is short
            current = _joined(held, current)
        elif held is not None:
            yield held
        held = current
    if held is not None:
        yield held


def keep_top(keys: pa.Array, scores: np.ndarray, ratio: float, method: str) -> tuple[np.ndarray, float]:
    """The index positions (ascending) of the round((1 − ratio) · N) highest scores, ties by key
    ascending, and the lowest kept score (the threshold)."""
    k = round((1.0 - ratio) * len(scores))
    if k < 1:
        raise CurateError(f"--method {method} --ratio {ratio} keeps none of {len(scores)} eligible samples")
    # from_pandas: a NaN (never expected for a status-ok sample) becomes a null, sorted last.
    table = pa.table({"score": pa.array(scores, from_pandas=True), "key": keys})
    order = pc.sort_indices(table, sort_keys=[("score", "descending"), ("key", "ascending")])
    top = order.to_numpy()[:k]
    return np.sort(top), float(scores[top[-1]])


def _batch_count(kept: int, config: SelectConfig) -> int:
    """S for --steps, K passes' worth of whole batches for --passes, else one pass with a short last."""
    b = config.batch_size
    if not config.whole_batches:
        return math.ceil(kept / b)
    if kept < b:
        raise CurateError(
            f"--method {config.method} keeps {kept} samples, fewer than one batch of {b}: a selection of "
            "whole batches (--steps, --passes) needs at least one"
        )
    return config.steps if config.steps is not None else config.passes * (kept // b)


def _batch_tables(
    index: SampleIndex,
    kept: np.ndarray,
    scores: np.ndarray,
    config: SelectConfig,
    batches: int,
    counts: PassCounts,
    partition: tuple[int, int],
) -> Iterator[pa.Table]:
    """`batches` batches of b from pass after pass over the kept set, each a fresh seeded shuffle: with
    whole batches a pass's remainder (< b) is left out of it, else the one pass ends in a short batch."""
    number, count = partition
    b = config.batch_size
    per_pass = len(kept) // b if config.whole_batches else batches
    made = 0
    while made < batches:
        order = np.random.default_rng(shuffle_seed(config.seed, counts.passes)).permutation(kept)
        counts.passes += 1
        take = min(per_pass, batches - made)
        if config.whole_batches:
            if take == per_pass:
                counts.left_out += len(kept) - per_pass * b
            order = order[: take * b]
        local = made + np.arange(len(order)) // b
        yield _rows(index, order, local * count + number, scores)
        made += take


def _rows(index: SampleIndex, positions: np.ndarray, batch: np.ndarray, scores: np.ndarray) -> pa.Table:
    taken = pa.array(positions)
    n = len(positions)
    return pa.table(
        {
            "key": index.key.take(taken),
            "shard": index.shard.take(taken).cast(pa.string()),
            "batch": pa.array(batch.astype(np.int64)),
            "super_batch": pa.array(np.full(n, -1, np.int64)),  # a global filter draws from no super-batch
            "chunk": pa.array(np.zeros(n, np.int32)),
            "score": pa.array(scores[positions]),
            "sha256": index.sha256.take(taken),
        },
        schema=MANIFEST_SCHEMA,
    )


def _file_ranges(index: SampleIndex, reference: ScoreFolder) -> Iterator[tuple[int, int, int]]:
    """(file id, lo, hi) of each score file's rows in the index, which is in file order."""
    bounds = np.searchsorted(index.file, np.arange(len(reference.files) + 1))
    for file_id in range(len(reference.files)):
        lo, hi = int(bounds[file_id]), int(bounds[file_id + 1])
        if lo < hi:
            yield file_id, lo, hi


def _joined(
    first: tuple[np.ndarray, Embeddings], second: tuple[np.ndarray, Embeddings]
) -> tuple[np.ndarray, Embeddings]:
    (p, a), (q, b) = first, second
    image, text = np.concatenate([a.image, b.image]), np.concatenate([a.text, b.text])
    return np.concatenate([p, q]), Embeddings(image, text)
