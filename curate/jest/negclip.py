"""negCLIPLoss's batch term (Wang et al. 2024, "CLIPLoss and Norm-Based Data Selection Methods for
Multimodal Contrastive Learning"), one random batch at a time, block by block (pure tensor code).

For a batch of B pairs with L2-normalised image rows x_i, text rows y_j and the reference's t:
    s_ij = <x_i, y_j>,     r_i = ½ (logsumexp_j t s_ij + logsumexp_j t s_ji)      (j = i included)
and negCLIPLoss_i = t s_ii − mean over random batches containing i of r_i: the CLIP score corrected by how
similar the sample is to everything else (a generic caption or image scores high with every partner). The
bias b is not used: a softmax over j is invariant to adding one constant to every logit.
"""

from __future__ import annotations

import torch
from torch import Tensor

from curate.jest.losses import DEFAULT_BLOCK_ELEMENTS, PairEmbeddings, _mm, _operand


@torch.no_grad()
def batch_logsumexp(
    emb: PairEmbeddings, dtype: torch.dtype = torch.float32, block_elements: int = DEFAULT_BLOCK_ELEMENTS
) -> Tensor:
    """r_i = ½ (row logsumexp + column logsumexp) of t X Yᵀ for every i, a length-B vector in `dtype`.

    Rows go in blocks of at most `block_elements / B`, so memory is O(block_elements), never B x B. A row's
    logsumexp is complete within its block; a column's gathers one partial logsumexp per block, folded in
    with logaddexp (a running max and rescaled sum in one stable op) so no block is kept.
    """
    n = emb.size
    rows = max(1, min(n, block_elements // max(1, n)))
    row_lse = torch.empty(n, dtype=dtype, device=emb.image.device)
    col_lse = torch.full((n,), float("-inf"), dtype=dtype, device=emb.image.device)
    logits = torch.empty(rows, n, dtype=dtype, device=emb.image.device)  # reused: no page faults per block
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        block = logits[: hi - lo]
        # t scales the fp32 products, not a half-precision operand (which would round t * x to its 8 or 11
        # bits), as in the pair losses.
        _mm(_operand(emb.image[lo:hi], dtype), emb.text, dtype, out=block).mul_(emb.logit_scale)
        row_lse[lo:hi] = torch.logsumexp(block, dim=1)
        col_lse = torch.logaddexp(col_lse, torch.logsumexp(block, dim=0))
    return 0.5 * (row_lse + col_lse)


def diagonal_logits(emb: PairEmbeddings, dtype: torch.dtype = torch.float32) -> Tensor:
    """t s_ii for every i, from row-wise dot products: O(B * D), no matrix."""
    return (emb.image.to(dtype) * emb.text.to(dtype)).sum(-1) * emb.logit_scale
