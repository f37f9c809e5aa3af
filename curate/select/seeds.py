"""The seeds of a selection, each an independent hash of (seed, what it seeds) by numpy's SeedSequence, so
that no two streams share one and none depends on the order things run in."""

from __future__ import annotations

import numpy as np

# Streams 0 and 1 seed a super-batch's draws (the selection, the random batch it is compared with); 2 seeds
# a pass's permutation; 3 the shuffle of a global filter's kept set; 4 the passes whose super-batches are
# negclip's random batches; 5 the seed of a partition of the score files.
DRAW, RANDOM_BATCH, PASS, GLOBAL_SHUFFLE, NEGCLIP_PASS, PARTITION = 0, 1, 2, 3, 4, 5


def _hash(*words: int) -> int:
    return int(np.random.SeedSequence(list(words)).generate_state(2, np.uint64)[0] >> 1)  # 63 bits


def stream_seed(seed: int, super_batch: int, stream: int) -> int:
    """The seed of `stream` (DRAW or RANDOM_BATCH) in one super-batch."""
    return _hash(seed, super_batch, stream)


def pass_seed(seed: int, number: int) -> int:
    """The seed of pass `number`'s permutation: `seed` itself for the first pass (so a one-pass selection
    is what it always was), an independent hash of (seed, pass) for the others."""
    return seed if number == 0 else _hash(seed, number, PASS)


def shuffle_seed(seed: int, number: int) -> int:
    """The seed of pass `number`'s shuffle of a global filter's kept set."""
    return _hash(seed, number, GLOBAL_SHUFFLE)


def negclip_pass_seed(seed: int, number: int) -> int:
    """The seed of negclip's pass `number` over the crawl, whose super-batches are its random batches: a
    stream of its own, so they never coincide with a JEST selection's super-batches of the same seed."""
    return _hash(seed, number, NEGCLIP_PASS)


def partition_seed(seed: int, number: int) -> int:
    """The seed partition `number` runs its selection under: `seed` itself for partition 0 (so a
    one-partition selection is what it always was), an independent hash of (seed, partition) for the others.
    Every seed above then derives from it, so no two partitions share a stream."""
    return seed if number == 0 else _hash(seed, number, PARTITION)
