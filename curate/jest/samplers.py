"""JEST (joint example selection) and the baselines that sit beside it.

All samplers draw without replacement with Gumbel top-k: the top c of logits/tau + Gumbel noise are an
exact sample of c items from softmax(logits/tau), in draw order (Plackett-Luce). Noise is one uniform
vector of length B per draw, made on the scores' device from the caller's generator, so every sampler
consumes a generator identically on CPU and CUDA and no step syncs with the host.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from curate.jest.losses import (
    DEFAULT_BLOCK_ELEMENTS,
    PairEmbeddings,
    PairScores,
    SelectionError,
    pair_scores,
)

METHODS = ("jest", "independent", "topk", "random")
FIRST_CHUNK = ("diagonal", "uniform")


@dataclass(frozen=True)
class Selection:
    """A chosen sub-batch in draw order: `score` is the item's (conditional) score when it was drawn."""

    indices: Tensor  # int64 [b]
    chunk: Tensor  # int32 [b], 0 = first chunk
    score: Tensor  # [b], in the accumulation dtype

    def __len__(self) -> int:
        return self.indices.shape[0]


def selection_size(n: int, ratio: float, chunks: int = 1) -> int:
    """b = round((1 - ratio) * B), validated: at least one example per chunk."""
    if not 0.0 <= ratio < 1.0:
        raise SelectionError(f"filter ratio must be in [0, 1), got {ratio}")
    if chunks < 1:
        raise SelectionError(f"chunks must be a positive integer, got {chunks}")
    if n < chunks:
        raise SelectionError(f"super-batch of {n} examples is smaller than chunks={chunks}")
    size = round((1.0 - ratio) * n)
    if size < chunks:
        raise SelectionError(
            f"ratio {ratio} keeps {size} of {n} examples, fewer than chunks={chunks}: lower the ratio "
            "or the number of chunks"
        )
    return size


def chunk_sizes(size: int, chunks: int) -> list[int]:
    """Split b into N chunks differing by at most one, larger first (so the last may be smaller)."""
    base, extra = divmod(size, chunks)
    return [base + 1] * extra + [base] * (chunks - extra)


def gumbel_top_k(
    logits: Tensor, taken: Tensor | None, k: int, temperature: float, generator: torch.Generator | None
) -> Tensor:
    """k indices drawn without replacement from softmax(logits / temperature), items in `taken` excluded."""
    uniform = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    # Clamping avoids -log(0) = inf, which would tie a live item with the excluded ones at -inf.
    keys = logits / temperature - torch.log(-torch.log(uniform.clamp_(min=torch.finfo(logits.dtype).tiny)))
    if taken is not None:
        keys.masked_fill_(taken, float("-inf"))
    return torch.topk(keys, k).indices


def check_arguments(
    scores: PairScores, size: int, temperature: float, generator: torch.Generator | None
) -> None:
    if not 1 <= size <= scores.size:
        raise SelectionError(f"cannot select {size} of {scores.size} examples")
    if not temperature > 0:
        raise SelectionError(f"temperature must be positive, got {temperature}")
    if generator is not None and generator.device.type != scores.device.type:
        raise SelectionError(f"generator is on {generator.device} but the embeddings are on {scores.device}")


def jest_loop(
    size: int,
    chunks: int,
    first: Tensor,
    update: Callable[[Tensor], Tensor] | None,
    first_chunk: str,
    temperature: float,
    generator: torch.Generator | None,
) -> Selection:
    """The chunk loop shared by streaming JEST and its dense twin; only `update` (the cross sums) differs.

    u starts at the diagonal A_kk; after chunk C it gains A[:, C].sum(1) + A[C, :].sum(0), so before each
    draw u_k = A_kk + sum over j in S of (A_kj + A_jk), the conditional logit of k given S.
    """
    if first_chunk not in FIRST_CHUNK:
        raise SelectionError(f"first_chunk must be one of {', '.join(FIRST_CHUNK)}, got {first_chunk!r}")
    u = first.clone()
    taken = torch.zeros(u.shape, dtype=torch.bool, device=u.device)
    indices, chunk_ids, drawn = [], [], []
    for step, c in enumerate(chunk_sizes(size, chunks)):
        logits = torch.zeros_like(u) if step == 0 and first_chunk == "uniform" else u
        chosen = gumbel_top_k(logits, taken, c, temperature, generator)
        indices.append(chosen)
        drawn.append(u[chosen])
        chunk_ids.append(torch.full((c,), step, dtype=torch.int32, device=u.device))
        taken[chosen] = True
        if update is not None and step < chunks - 1:
            u = u + update(chosen)
    return Selection(torch.cat(indices), torch.cat(chunk_ids), torch.cat(drawn))


@torch.no_grad()
def sample_jest(
    scores: PairScores,
    size: int,
    *,
    chunks: int = 16,
    temperature: float = 1.0,
    first_chunk: str = "diagonal",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> Selection:
    """The paper's sampler, streaming: O(B * b * D) work, O(B * c) memory, the B x B matrix never built."""
    check_arguments(scores, size, temperature, generator)
    if not 1 <= chunks <= size:
        raise SelectionError(f"chunks must be between 1 and the selection size {size}, got {chunks}")

    def update(chosen: Tensor) -> Tensor:
        return scores.cross_sums(chosen, dtype, block_elements)

    return jest_loop(size, chunks, scores.diagonal(dtype), update, first_chunk, temperature, generator)


@torch.no_grad()
def sample_independent(
    scores: PairScores,
    size: int,
    *,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Selection:
    """b items from softmax(A_kk / tau), no cross terms: literally JEST's first draw with N = 1."""
    check_arguments(scores, size, temperature, generator)
    return jest_loop(size, 1, scores.diagonal(dtype), None, "diagonal", temperature, generator)


@torch.no_grad()
def sample_topk(
    scores: PairScores,
    size: int,
    *,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Selection:
    """The b best diagonal scores, deterministic (temperature and generator are ignored)."""
    check_arguments(scores, size, temperature, generator)
    diagonal = scores.diagonal(dtype)
    top = torch.topk(diagonal, size)
    return Selection(top.indices, torch.zeros(size, dtype=torch.int32, device=diagonal.device), top.values)


@torch.no_grad()
def sample_random(
    scores: PairScores,
    size: int,
    *,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Selection:
    """b items uniformly without replacement; the reported score is the diagonal, comparable to the others."""
    check_arguments(scores, size, temperature, generator)
    return jest_loop(size, 1, scores.diagonal(dtype), None, "uniform", temperature, generator)


def select_batch(
    method: str,
    reference: PairEmbeddings | None,
    learner: PairEmbeddings | None,
    criterion: str = "learnability",
    ratio: float = 0.8,
    chunks: int = 16,
    temperature: float = 1.0,
    first_chunk: str = "diagonal",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
    false_negatives: float | None = None,
) -> Selection:
    """Select round((1 - ratio) * B) examples of one super-batch with `method` and `criterion`.

    `false_negatives`: T of `--false-negatives mask:T` (pairs the reference sees as one thing add 0 to the
    cross terms, so it changes `jest` alone; the other methods read the diagonal only).
    `chunks` and `first_chunk` only affect `jest`. Runs under no_grad on the embeddings' device; the
    result stays there (no host sync).
    """
    if method not in METHODS:
        raise SelectionError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    scores = pair_scores(criterion, reference, learner, false_negatives)
    size = selection_size(scores.size, ratio, chunks if method == "jest" else 1)
    common = {"temperature": temperature, "generator": generator, "dtype": dtype}
    if method == "jest":
        return sample_jest(
            scores, size, chunks=chunks, first_chunk=first_chunk, block_elements=block_elements, **common
        )
    sampler = {"independent": sample_independent, "topk": sample_topk, "random": sample_random}[method]
    return sampler(scores, size, **common)
