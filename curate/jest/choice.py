"""One super-batch in, one chosen batch out: the unit that offline `select` and online JEST both run.

Besides the selection it scores the chosen batch and a uniformly random batch of the same size with the
same criterion, as the mean of A_ij over the b x b pairs: the number that shows joint selection did
something, in the same units wherever it is logged (summary.json, metrics.jsonl, the report).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from curate.jest.losses import PairEmbeddings, batch_totals
from curate.jest.samplers import Selection, select_batch


@dataclass(frozen=True)
class Choice:
    selection: Selection
    selected_score: Tensor  # mean A_ij over the chosen batch's b x b pairs (0-d float64, on the device)
    random_score: Tensor  # the same for a uniformly random batch of the same size
    # --false-negatives mask:T only: the share of each batch's off-diagonal pairs the mask zeroes
    selected_masked: Tensor | None = None
    random_masked: Tensor | None = None


@torch.no_grad()
def choose(
    method: str,
    reference: PairEmbeddings | None,
    learner: PairEmbeddings | None,
    criterion: str,
    ratio: float,
    chunks: int,
    temperature: float,
    generator: torch.Generator,
    random_generator: torch.Generator,
    false_negatives: float | None = None,
) -> Choice:
    """Select (1 - ratio) * B of the super-batch and score it against a random batch.

    The random batch draws from its own generator, so adding or dropping the comparison never changes
    the selection. Nothing here syncs with the host: the scores stay 0-d tensors until a caller reads them.
    """
    selection = select_batch(
        method, reference, learner, criterion, ratio, chunks, temperature, generator=generator,
        false_negatives=false_negatives,
    )  # fmt: skip
    size = len(selection)
    n = (reference or learner).size
    device = selection.indices.device
    random = torch.randperm(n, generator=random_generator, device=device)[:size]
    pairs = size * size
    chosen = batch_totals(selection.indices, reference, learner, criterion, false_negatives=false_negatives)
    drawn = batch_totals(random, reference, learner, criterion, false_negatives=false_negatives)
    off_diagonal = max(size * (size - 1), 1)
    return Choice(
        selection=selection,
        selected_score=chosen.score / pairs,
        random_score=drawn.score / pairs,
        selected_masked=None if chosen.masked is None else chosen.masked / off_diagonal,
        random_masked=None if drawn.masked is None else drawn.masked / off_diagonal,
    )
