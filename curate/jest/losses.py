"""SigLIP pair losses and selection criteria, computed block by block from embeddings.

For model m with L2-normalised image rows x_i, text rows y_j, scale t and bias b:
    logit_ij = t <x_i, y_j> + b,    loss_ij = softplus(-z_ij logit_ij),   z_ij = +1 iff i == j.
A criterion A_ij is a signed sum of such losses: learnability = learner - reference, easy = -reference,
hard = learner. Nothing here builds a B x B matrix unless a caller asks for that block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from curate.errors import CurateError

CRITERIA = ("learnability", "easy", "hard")

# A block of the criterion matrix holds at most this many elements (64 MiB in fp32); the streaming update
# keeps a handful of such temporaries alive, which is what bounds its memory to O(B * c).
DEFAULT_BLOCK_ELEMENTS = 1 << 24


class SelectionError(CurateError, ValueError):
    """Invalid arguments to the selection math (bad shapes, ratio, criterion, ...)."""


@dataclass(frozen=True)
class PairEmbeddings:
    """One model's embeddings of a super-batch: row i of `image` and `text` are the pair (i, i).

    `logit_scale` is t itself (already exponentiated, as in `curate.logit_scale`), `logit_bias` is b.
    """

    image: Tensor
    text: Tensor
    logit_scale: float
    logit_bias: float

    def __post_init__(self) -> None:
        if self.image.dim() != 2 or self.image.shape != self.text.shape:
            raise SelectionError(
                f"image and text embeddings must both be [B, D]; got {tuple(self.image.shape)} "
                f"and {tuple(self.text.shape)}"
            )
        if self.image.device != self.text.device:
            raise SelectionError(f"image on {self.image.device} but text on {self.text.device}")

    @property
    def size(self) -> int:
        return self.image.shape[0]


@dataclass(frozen=True)
class FalseNegatives:
    """Pairs the reference sees as one thing: image–image or text–text cosine above `threshold`.

    JEST's cross terms reward a batch whose members are mutual hard negatives; two samples that show the
    same thing (a near duplicate, one concept phrased twice) are a false negative pair, which SigLIP's loss
    pushes apart and the cross term seeks out. Off the diagonal such a pair contributes 0 to A
    (`--false-negatives mask:T`). Cosines are at most 1, so T = 1 masks nothing.
    """

    reference: PairEmbeddings
    threshold: float

    def same(self, rows: Tensor, cols: Tensor | slice, dtype: torch.dtype = torch.float32) -> Tensor:
        """[len(rows), |cols|] bool: True where rows[i] and cols[j] are the same thing (i = j included)."""
        ref = self.reference
        images = _mm(ref.image[rows], ref.image[cols], dtype)
        texts = _mm(ref.text[rows], ref.text[cols], dtype)
        return (images > self.threshold).logical_or_(texts > self.threshold)


def false_negatives(spec: str | None) -> float | None:
    """`--false-negatives`: "none" (or None) -> None, "mask:T" -> T, a cosine in [-1, 1]. T = 1 is None:
    no cosine exceeds 1, and an identical pair's rounded cosine (1 + 1e-7) must not count as one."""
    if spec is None or spec == "none":
        return None
    kind, _, value = spec.partition(":")
    try:
        threshold = float(value)
    except ValueError:
        threshold = math.nan
    if kind != "mask" or not -1.0 <= threshold <= 1.0:
        raise SelectionError(
            f"--false-negatives must be none or mask:T with T a cosine in [-1, 1], got {spec!r}"
        )
    return threshold if threshold < 1.0 else None


def _gemm_dtype(x: Tensor, dtype: torch.dtype) -> torch.dtype:
    half = x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) and dtype == torch.float32
    return x.dtype if half else dtype


def _operand(x: Tensor, dtype: torch.dtype) -> Tensor:
    """x as a GEMM operand: as it is on the CUDA half path, else upcast to `dtype` once."""
    return x.to(_gemm_dtype(x, dtype))


def _scalar(value: Tensor | float, like: Tensor) -> Tensor:
    """t or b as a 0-d tensor on `like`'s device and dtype: a float becomes a fill kernel, never a host copy
    (so no sync), and a device parameter (online JEST's) stays where it is."""
    if isinstance(value, Tensor):
        return value.detach().to(like.device, like.dtype)
    return torch.full((), value, device=like.device, dtype=like.dtype)


def _mm(x: Tensor, y: Tensor, dtype: torch.dtype, out: Tensor | None = None) -> Tensor:
    """x @ y.T accumulated and returned in `dtype`.

    CUDA half-precision inputs use the fp32-output GEMM (tensor cores, fp32 accumulation, no fp16
    rounding of the logits); elsewhere the inputs are upcast first, the only way to accumulate in fp32 on
    CPU. Upcasting a block costs O(rows * D), small beside the O(rows * cols * D) product.
    """
    if _gemm_dtype(x, dtype) != dtype:
        return torch.mm(x, y.T, out_dtype=dtype, out=out)
    return torch.mm(x.to(dtype), y.to(dtype).T, out=out)


def pair_losses(
    emb: PairEmbeddings, rows: Tensor, cols: Tensor, dtype: torch.dtype = torch.float32
) -> Tensor:
    """SigLIP losses of image rows `rows` vs texts `cols` (global indices), [len(rows), len(cols)]."""
    logits = _mm(emb.image[rows], emb.text[cols], dtype).mul_(emb.logit_scale).add_(emb.logit_bias)
    positive = rows[:, None] == cols[None, :]
    return F.softplus(torch.where(positive, -logits, logits))


def diagonal_losses(emb: PairEmbeddings, dtype: torch.dtype = torch.float32) -> Tensor:
    """loss_ii for every i, from row-wise dot products: O(B * D), no matrix."""
    dots = (emb.image.to(dtype) * emb.text.to(dtype)).sum(-1)
    return F.softplus(-(dots * emb.logit_scale + emb.logit_bias))


@dataclass(frozen=True)
class PairScores:
    """The criterion matrix A of one super-batch, never stored: each model enters with a sign."""

    terms: tuple[tuple[float, PairEmbeddings], ...]
    masked: FalseNegatives | None = None  # false negative pairs: 0 off the diagonal

    @property
    def size(self) -> int:
        return self.terms[0][1].size

    @property
    def device(self) -> torch.device:
        return self.terms[0][1].image.device

    def diagonal(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return sum(sign * diagonal_losses(emb, dtype) for sign, emb in self.terms)

    def block(self, rows: Tensor, cols: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """A[rows][:, cols], exact (diagonal entries included)."""
        return self.masked_block(rows, cols, dtype)[0]

    def masked_block(
        self, rows: Tensor, cols: Tensor, dtype: torch.dtype = torch.float32
    ) -> tuple[Tensor, Tensor | None]:
        """A[rows][:, cols] and where the mask zeroed it (None without a mask): off the diagonal, the pairs
        the reference sees as one thing."""
        block = sum(sign * pair_losses(emb, rows, cols, dtype) for sign, emb in self.terms)
        if self.masked is None:
            return block, None
        same = self.masked.same(rows, cols, dtype).logical_and_(rows[:, None] != cols[None, :])
        return block.masked_fill(same, 0.0), same

    def cross_sums(
        self, chunk: Tensor, dtype: torch.dtype = torch.float32, block_elements: int = DEFAULT_BLOCK_ELEMENTS
    ) -> Tensor:
        """A[:, chunk].sum(1) + A[chunk, :].sum(0) as a length-B vector, valid at every k not in `chunk`.

        Entries with k in `chunk` may contain the (i, i) pairs with the wrong sign: the sampler masks
        chosen items, so skipping the z-sign saves two passes over every block. Columns go in blocks of
        at most `block_elements / len(chunk)`, so memory is O(B * c) whatever B is; the loop bounds are
        host-side ints, so there is no device sync. By linearity the sum over models is taken per model
        and never forms the elementwise difference.
        """
        n, c = self.size, chunk.shape[0]
        width = min(n, max(1, block_elements // (2 * c)))
        out = torch.zeros(n, dtype=dtype, device=self.device)
        # Both directions share the column block J: images C vs texts J is A[C, J], texts C vs images J is
        # A[J, C]^T; they fill one [2, c, |J|] buffer so a single reduction serves both. t and b are applied
        # to the fp32 products in one pass (addcmul): folding t into a bf16 operand would round t * x to
        # 8 bits, an error of up to 0.03 in a cross sum that the fp32-output GEMM otherwise avoids. Buffers
        # are reused across blocks: re-allocating 64 MiB per block costs page faults on CPU.
        logits = torch.empty(2, c, width, dtype=dtype, device=self.device)
        losses = torch.empty_like(logits)
        lefts = [
            (
                sign,
                emb,
                _operand(emb.image[chunk], dtype),
                _operand(emb.text[chunk], dtype),
                _scalar(emb.logit_scale, logits),
                _scalar(emb.logit_bias, logits),
            )
            for sign, emb in self.terms
        ]
        for lo in range(0, n, width):
            hi = min(n, lo + width)
            if hi - lo != logits.shape[2]:  # the last, narrower block
                logits = logits.new_empty(2, c, hi - lo)
                losses = torch.empty_like(logits)
            # Similarity is symmetric, so one [c, |J|] mask serves both directions. Pairs (k, k) with k in
            # the chunk are masked too, which is harmless: those k are chosen and the sampler masks them.
            same = self.masked.same(chunk, slice(lo, hi), dtype) if self.masked is not None else None
            for sign, emb, left_image, left_text, scale, bias in lefts:
                _mm(left_image, emb.text[lo:hi], dtype, out=logits[0])
                _mm(left_text, emb.image[lo:hi], dtype, out=logits[1])
                torch.addcmul(bias, logits, scale, out=logits)
                # aten's softplus.out is F.softplus (same beta=1, threshold=20) into a reused buffer;
                # logaddexp(out=) would drop the threshold and drift from the dense twin.
                torch.ops.aten.softplus.out(logits, 1, 20, out=losses)
                if same is not None:
                    losses.masked_fill_(same, 0.0)
                out[lo:hi].add_(losses.sum((0, 1)), alpha=sign)
        return out


def pair_scores(
    criterion: str,
    reference: PairEmbeddings | None,
    learner: PairEmbeddings | None,
    false_negatives: float | None = None,
) -> PairScores:
    """Validate which embeddings `criterion` needs and build its PairScores; `false_negatives`: the
    threshold T of `FalseNegatives`, read off the reference's embeddings (None: nothing masked)."""
    needs = {"learnability": ("reference", "learner"), "easy": ("reference",), "hard": ("learner",)}
    if criterion not in needs:
        raise SelectionError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    given = {"reference": reference, "learner": learner}
    missing = [name for name in needs[criterion] if given[name] is None]
    if missing:
        raise SelectionError(f"criterion {criterion!r} needs {' and '.join(missing)} embeddings")
    terms = {
        "learnability": ((1.0, learner), (-1.0, reference)),
        "easy": ((-1.0, reference),),
        "hard": ((1.0, learner),),
    }[criterion]
    if len(terms) == 2:
        (_, a), (_, b) = terms
        if a.size != b.size:
            raise SelectionError(f"learner has {a.size} examples but reference has {b.size}")
        if a.image.device != b.image.device:
            raise SelectionError(f"learner on {a.image.device} but reference on {b.image.device}")
    masked = None
    if false_negatives is not None:
        if reference is None:
            raise SelectionError("masking false negatives needs the reference's embeddings")
        if reference.size != terms[0][1].size:
            raise SelectionError(
                f"reference has {reference.size} examples but the criterion {terms[0][1].size}"
            )
        masked = FalseNegatives(reference, false_negatives)
    return PairScores(terms, masked)  # type: ignore[arg-type]


@dataclass(frozen=True)
class BatchTotals:
    score: Tensor  # the sum over i, j in S of A_ij (0-d float64)
    masked: Tensor | None  # the off-diagonal pairs of S the mask zeroed (0-d float64; None: no mask)


@torch.no_grad()
def batch_totals(
    indices: Tensor,
    reference: PairEmbeddings | None,
    learner: PairEmbeddings | None,
    criterion: str = "learnability",
    dtype: torch.dtype = torch.float32,
    block_rows: int = 1024,
    false_negatives: float | None = None,
) -> BatchTotals:
    """score(S) = the sum over i, j in S of A_ij for the sub-batch S = `indices` and, with a mask, how many
    of its pairs the mask zeroed, in one pass on the embeddings' device. Rows go in blocks of `block_rows`,
    so memory is O(block_rows * b), never b x b for a large b; nothing syncs with the host."""
    scores = pair_scores(criterion, reference, learner, false_negatives)
    total = torch.zeros((), dtype=torch.float64, device=indices.device)
    masked = torch.zeros((), dtype=torch.float64, device=indices.device) if scores.masked else None
    for lo in range(0, len(indices), block_rows):
        block, same = scores.masked_block(indices[lo : lo + block_rows], indices, dtype)
        total += block.sum(dtype=torch.float64)
        if same is not None:
            masked += same.sum(dtype=torch.float64)
    return BatchTotals(total, masked)
