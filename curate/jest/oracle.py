"""Slow twins of the samplers, for tests and the benchmark only: they build the B x B matrix.

`dense_jest` is JEST computed from the full criterion matrix A; it shares the chunk loop and the Gumbel
draw with the streaming sampler, so the same generator must give the same indices. `subset_scores` and
`gibbs_subsets` look at the exact target of joint selection, p(S) proportional to exp(score(S) / tau)
over subsets of a fixed size, which JEST approximates in N chunks.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from curate.jest.losses import PairScores, SelectionError
from curate.jest.samplers import Selection, check_arguments, jest_loop


def dense_matrix(scores: PairScores, dtype: torch.dtype = torch.float32) -> Tensor:
    """The full B x B criterion matrix A (O(B^2) memory)."""
    every = torch.arange(scores.size, device=scores.device)
    return scores.block(every, every, dtype)


@torch.no_grad()
def dense_jest(
    scores: PairScores,
    size: int,
    *,
    chunks: int = 16,
    temperature: float = 1.0,
    first_chunk: str = "diagonal",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Selection:
    """JEST from the materialised A: u += A[:, C].sum(1) + A[C, :].sum(0) read off the matrix."""
    check_arguments(scores, size, temperature, generator)
    matrix = dense_matrix(scores, dtype)

    def update(chosen: Tensor) -> Tensor:
        return matrix[:, chosen].sum(1) + matrix[chosen, :].sum(0)

    return jest_loop(size, chunks, matrix.diagonal(), update, first_chunk, temperature, generator)


def matrix_subset_score(matrix: Tensor, indices: Tensor) -> Tensor:
    """score(S) = sum over i, j in S of A_ij; `indices` may be batched, [..., b]."""
    return matrix[indices[..., :, None], indices[..., None, :]].sum((-1, -2))


def subset_scores(matrix: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Every subset of `size` of a tiny B and its score, by enumeration: (subsets [M, b], scores [M])."""
    n = matrix.shape[0]
    if math.comb(n, size) > 2_000_000:
        raise SelectionError(f"C({n}, {size}) subsets is too many to enumerate")
    subsets = torch.tensor(list(itertools.combinations(range(n), size)), device=matrix.device)
    return subsets, matrix_subset_score(matrix, subsets)


@torch.no_grad()
def gibbs_subsets(
    matrix: Tensor,
    size: int,
    *,
    temperature: float = 1.0,
    chains: int = 64,
    steps: int = 2000,
    burn_in: int = 500,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Brute-force Metropolis swap chains over subsets of fixed size, targeting exp(score(S) / tau).

    Each step proposes swapping one random member for one random non-member and accepts with
    probability min(1, exp(delta / tau)); the proposal is symmetric, so the chain is exact in the limit.
    Runs `chains` chains in parallel and returns the scores of every post-burn-in state, [chains * kept].
    """
    n = matrix.shape[0]
    device = matrix.device
    rows = torch.arange(chains, device=device)
    member = torch.zeros(chains, n, dtype=torch.bool, device=device)
    start = torch.rand(chains, n, generator=generator, device=device).argsort(1)[:, :size]
    member[rows[:, None], start] = True
    sym = matrix + matrix.T
    # g_k = sum over j in S of (A_kj + A_jk): the gain of adding k to S, kept up to date incrementally.
    gain = (sym * member[:, None, :]).sum(-1)
    score = matrix_subset_score(matrix, start)
    kept = []
    for step in range(steps):
        draw = torch.rand(chains, 3, n, generator=generator, device=device)
        out = torch.where(member, draw[:, 0], -1.0).argmax(1)  # a random member
        into = torch.where(member, -1.0, draw[:, 1]).argmax(1)  # a random non-member
        # Removing o costs gain_o - A_oo (gain_o counts A_oo twice); adding k to S \ {o} brings
        # A_kk + gain_k - (A_ko + A_ok).
        delta = matrix[into, into] + matrix[out, out] + gain[rows, into] - gain[rows, out] - sym[into, out]
        accept = torch.log(draw[:, 2, 0]) < delta / temperature
        member[rows[accept], out[accept]] = False
        member[rows[accept], into[accept]] = True
        gain[accept] += sym[into[accept]] - sym[out[accept]]
        score = torch.where(accept, score + delta, score)
        if step >= burn_in:
            kept.append(score)
    return torch.cat(kept)
