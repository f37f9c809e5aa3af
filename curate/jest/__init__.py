"""The selection core: SigLIP pair losses, criteria, streaming JEST and its baselines (pure tensor code)."""

from curate.jest.choice import Choice, choose
from curate.jest.losses import (
    CRITERIA,
    BatchTotals,
    FalseNegatives,
    PairEmbeddings,
    PairScores,
    SelectionError,
    batch_totals,
    false_negatives,
    pair_losses,
    pair_scores,
)
from curate.jest.samplers import (
    FIRST_CHUNK,
    METHODS,
    Selection,
    chunk_sizes,
    sample_independent,
    sample_jest,
    sample_random,
    sample_topk,
    select_batch,
    selection_size,
)

__all__ = [
    "Choice",
    "choose",
    "CRITERIA",
    "FIRST_CHUNK",
    "FalseNegatives",
    "METHODS",
    "PairEmbeddings",
    "PairScores",
    "Selection",
    "SelectionError",
    "BatchTotals",
    "batch_totals",
    "chunk_sizes",
    "false_negatives",
    "pair_losses",
    "pair_scores",
    "sample_independent",
    "sample_jest",
    "sample_random",
    "sample_topk",
    "select_batch",
    "selection_size",
]
