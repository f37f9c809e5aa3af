"""Every seed curate derives, in one place: select's streams and train's.

Select's are independent hashes of (seed, what they seed) by numpy's SeedSequence, so that no two streams
share one and none depends on the order things run in. Train's per-step streams keep the arithmetic
`seed * 1_000_003 + n` they were born with: a run started by an earlier version resumes on the same draws.
"""

from __future__ import annotations

import numpy as np

# Streams 0 and 1 seed a super-batch's draws (the selection, the random batch it is compared with); 2 seeds
# a pass's permutation; 3 the shuffle of a global filter's kept set; 4 the passes whose super-batches are
# negclip's random batches; 5 the seed of a partition of the score files; 6 a rank's own online JEST draw.
DRAW, RANDOM_BATCH, PASS, GLOBAL_SHUFFLE, NEGCLIP_PASS, PARTITION, LOCAL_CHOICE = 0, 1, 2, 3, 4, 5, 6


def _hash(*words: int) -> int:
    return int(np.random.SeedSequence(list(words)).generate_state(2, np.uint64)[0] >> 1)  # 63 bits


# ------------------------------------------------------------------------------------------- select


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


# -------------------------------------------------------------------------------------------- train

# XORed into a step's seed for --multi-resolution's split, so that its draw is not online JEST's stream
# (seeded by the same (seed, step)).
_SPLIT_STREAM = 1 << 62


def _per_step(seed: int, n: int) -> int:
    return seed * 1_000_003 + n


def epoch_seed(seed: int, epoch: int) -> int:
    """The permutation of the memory cache's epoch `epoch`, and of a manifest's batches in a later epoch."""
    return _per_step(seed, epoch)


def choice_seed(seed: int, step: int) -> int:
    """Online JEST's draws at `step`: the same on every rank, which all make the same global choice."""
    return _per_step(seed, step)


def local_choice_seed(seed: int, step: int, rank: int) -> int:
    """Online JEST's draws at `step` on `rank` under --online-scope local (rank 0 of one process is the
    global stream, so a one-process local run is a global one)."""
    return choice_seed(seed, step) if rank == 0 else _hash(seed, step, rank, LOCAL_CHOICE)


def split_seed(seed: int, step: int) -> int:
    """--multi-resolution's split of the batch of `step` into full and low resolution halves."""
    return _per_step(seed, step) ^ _SPLIT_STREAM
