"""A sigmoid pair loss for the embeddings of a softmax-trained reference: fit (t, b) by maximum likelihood.

JEST's criteria are SigLIP pair losses, loss_ij = softplus(−z_ij (t s_ij + b)) with s_ij = <x_i, y_j>
(curate/jest/losses.py). A SigLIP reference learnt its t and b with its embeddings; OpenAI CLIP learnt
t = 100 for a softmax over each row and has no b, and with b = 0 a sigmoid reads its unmatched pairs
(s ≈ 0.15, so t s ≈ 15) as confident matches: every pair loss would be dominated by negatives that are not
hard at all. So (t, b) are fitted to the embeddings themselves: the pair (t, b) that makes SigLIP's loss
smallest over K seeded random batches of n pool rows, matched pairs on the diagonal, i.e.

    minimise  L(t, b) = (1 / K n) Σ_batches Σ_ij softplus(−z_ij (t s_ij + b))

which is the likelihood of a logistic regression of "matched" on s with two parameters. It is convex in
(t, b), so Newton's method (with a backtracking line search, from SigLIP's initialisation t = 10, b = −10)
reaches the one optimum in a few dozen steps, with no learning rate to tune. Only b depends on n: the
negatives are a sample of all unmatched pairs, and subsampling one class of a logistic regression moves its
intercept alone (by about log((n' − 1)/(n − 1)) for batches of n'), not its slope t.

Pure tensor code: the rows come in, a `Calibration` comes out; the driver chooses the rows and records it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

BATCH_SIZE = 1024  # n: pairs per batch, n − 1 unmatched pairs per matched one
BATCHES = 16  # K: 16 M pairs in all, 16 K of them matched
INITIAL = (10.0, -10.0)  # SigLIP's initial t and b
MAX_STEPS = 100
TOLERANCE = 1e-12  # stop when the Newton decrement (the loss a full step would still gain) is below it
# The K·n·(n − 1) unmatched pairs enter through a histogram of their similarities: each bin as its count at
# its mean similarity. With bins 2/2^16 wide, replacing a bin's pairs by their mean moves the loss by under
# t²·width²/96 per pair (softplus'' ≤ 1/4), below 1e-6 at t = 100: the same optimum, at O(bins) per step.
BINS = 1 << 16


@dataclass(frozen=True)
class Calibration:
    """The fitted (t, b), how they were fitted, and how well the fitted pair loss separates the pairs."""

    logit_scale: float  # t
    logit_bias: float  # b
    batch_size: int  # n
    batches: int  # K
    seed: int
    matched_loss: float  # mean loss of a matched pair (the diagonal) under the fit
    unmatched_loss: float  # mean loss of an unmatched pair
    steps: int  # Newton steps taken
    method: str = "maximum likelihood of the sigmoid pair loss over seeded random batches (Newton)"

    def as_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class PairSimilarities:
    """The similarities of K batches' pairs: the matched ones each, the unmatched ones as a histogram."""

    matched: Tensor  # [K·n] float64
    unmatched: Tensor  # [bins] float64: the mean similarity of the unmatched pairs in each nonempty bin
    unmatched_count: Tensor  # [bins] float64: how many unmatched pairs each holds
    pairs_per_batch_row: int  # n: L sums each batch's pairs and divides by n, as SigLIP's loss does

    @property
    def batches(self) -> int:
        return self.matched.shape[0] // self.pairs_per_batch_row


def calibrate(
    image: Tensor, text: Tensor, seed: int, batch_size: int = BATCH_SIZE, batches: int = BATCHES
) -> Calibration:
    """Fit (t, b) to L2-normalised rows `image`, `text` ([M, D], row i of each a matched pair): K batches
    of n rows drawn without replacement (n = M when M < n), each batch's own pairs only."""
    if image.shape != text.shape or image.dim() != 2 or image.shape[0] < 2:
        raise ValueError(f"need [M, D] image and text rows with M >= 2, got {tuple(image.shape)}")
    n = min(batch_size, image.shape[0])
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(image.shape[0], generator=generator)[:n] for _ in range(batches)]
    pairs = pair_similarities(image, text, rows)
    t, b, steps = fit_sigmoid_pair_loss(pairs)
    matched, unmatched = mean_losses(pairs, t, b)
    return Calibration(t, b, n, batches, seed, matched, unmatched, steps)


def pair_similarities(image: Tensor, text: Tensor, batches: list[Tensor]) -> PairSimilarities:
    """s_ij = <x_i, y_j> within each batch of row ids (fp32 products, as select's pair losses use)."""
    matched = []
    counts = torch.zeros(BINS, dtype=torch.float64)
    sums = torch.zeros(BINS, dtype=torch.float64)
    for rows in batches:
        s = (image[rows].float() @ text[rows].float().T).reshape(-1)
        # Every pair into the histogram, then the matched ones (the diagonal) out: cheaper than a mask.
        bins = ((s + 1) * (BINS / 2)).long().clamp_(0, BINS - 1)
        diagonal = torch.arange(0, len(s), len(rows) + 1)
        counts += torch.bincount(bins, minlength=BINS) - torch.bincount(bins[diagonal], minlength=BINS)
        sums += torch.bincount(bins, weights=s.double(), minlength=BINS)
        sums -= torch.bincount(bins[diagonal], weights=s[diagonal].double(), minlength=BINS)
        matched.append(s[diagonal].double())
    held = counts > 0
    return PairSimilarities(torch.cat(matched), sums[held] / counts[held], counts[held], len(batches[0]))


def fit_sigmoid_pair_loss(pairs: PairSimilarities) -> tuple[float, float, int]:
    """(t, b, steps) minimising the mean SigLIP batch loss, by damped Newton steps on the two parameters."""
    theta = torch.tensor(INITIAL, dtype=torch.float64)
    loss = pair_loss(pairs, *theta.tolist())
    for step in range(1, MAX_STEPS + 1):
        gradient, hessian = _derivatives(pairs, theta)
        direction = torch.linalg.solve(hessian, gradient)
        decrement = float(gradient @ direction)
        if decrement < TOLERANCE:
            return float(theta[0]), float(theta[1]), step - 1
        size = 1.0
        while size > 1e-10:  # backtracking: halve the step until the loss falls enough (Armijo)
            trial = theta - size * direction
            trial_loss = pair_loss(pairs, *trial.tolist())
            if trial_loss <= loss - 1e-4 * size * decrement:
                break
            size /= 2
        else:
            return float(theta[0]), float(theta[1]), step  # no descent left at float64 precision
        theta, loss = trial, trial_loss
    return float(theta[0]), float(theta[1]), MAX_STEPS


def pair_loss(pairs: PairSimilarities, t: float, b: float) -> float:
    """L(t, b): the SigLIP loss of each batch (its pairs' losses summed, over n), averaged over the K."""
    matched = F.softplus(-(t * pairs.matched + b)).sum()
    unmatched = (pairs.unmatched_count * F.softplus(t * pairs.unmatched + b)).sum()
    return float(matched + unmatched) / (pairs.pairs_per_batch_row * pairs.batches)


def mean_losses(pairs: PairSimilarities, t: float, b: float) -> tuple[float, float]:
    """The mean pair loss of a matched pair and of an unmatched one under (t, b)."""
    matched = F.softplus(-(t * pairs.matched + b)).mean()
    unmatched = (
        pairs.unmatched_count * F.softplus(t * pairs.unmatched + b)
    ).sum() / pairs.unmatched_count.sum()
    return float(matched), float(unmatched)


def _derivatives(pairs: PairSimilarities, theta: Tensor) -> tuple[Tensor, Tensor]:
    """The gradient and Hessian of L in (t, b): a weighted logistic regression's, with features (s, 1)."""
    s = torch.cat([pairs.matched, pairs.unmatched])
    count = torch.cat([torch.ones_like(pairs.matched), pairs.unmatched_count])
    label = torch.cat([torch.ones_like(pairs.matched), torch.zeros_like(pairs.unmatched)])
    p = torch.sigmoid(theta[0] * s + theta[1])
    residual = count * (p - label)
    weight = count * p * (1 - p)
    gradient = torch.stack([(residual * s).sum(), residual.sum()])
    cross = (weight * s).sum()
    hessian = torch.stack([torch.stack([(weight * s * s).sum(), cross]), torch.stack([cross, weight.sum()])])
    scale = pairs.pairs_per_batch_row * pairs.batches
    return gradient / scale, hessian / scale
