"""The global filters' threshold across partitions: a fixed-size histogram of scores, merged by addition.

Each partition bins its per-sample scores by the top 16 bits of an order-preserving map of float32 onto
uint32 (65,536 bins, 512 KiB whatever the partition's size); the driver adds the partitions' histograms
and takes the highest bin t whose bins t and above hold at least k = round((1 − F) · N) samples; every
partition then keeps each sample in bin t or above. So the kept count is k plus part of bin t:
k ≤ kept ≤ k + count(t) − 1, the bound summary.json records. Bins are ~1/128 of a binade wide (7 mantissa
bits), so only scores tied to two or three significant digits share one.
"""

from __future__ import annotations

import numpy as np

BITS = 16
BINS = 1 << BITS
_SIGN = np.uint32(0x80000000)


def score_bins(scores: np.ndarray) -> np.ndarray:
    """Each score's bin (int64), monotone in the score: a higher float32 never lands in a lower bin. NaN
    (never expected of an eligible sample) goes to the lowest, as the exact path sorts it last."""
    values = np.nan_to_num(scores.astype(np.float32), nan=-np.inf, posinf=np.inf, neginf=-np.inf)
    bits = values.view(np.uint32)
    # IEEE 754 order: positive floats order as their bits with the sign bit set, negative ones reversed.
    ordered = np.where(bits & _SIGN, ~bits, bits | _SIGN)
    return (ordered >> np.uint32(32 - BITS)).astype(np.int64)


def sketch(scores: np.ndarray) -> np.ndarray:
    """The histogram (BINS int64 counts) of `scores`' bins: what a partition sends the driver."""
    return np.bincount(score_bins(scores), minlength=BINS).astype(np.int64)


def threshold_bin(histogram: np.ndarray, keep: int) -> int:
    """The highest bin whose samples, with those of every bin above, number at least `keep` (≥ 1)."""
    at_or_above = np.cumsum(histogram[::-1])[::-1]
    return int(np.flatnonzero(at_or_above >= keep)[-1])


def bin_floor(number: int) -> float:
    """The lowest float32 in bin `number`: every kept score is at least this (NaN at the very bottom)."""
    ordered = np.array([number << (32 - BITS)], np.uint32)
    bits = np.where(ordered & _SIGN, ordered ^ _SIGN, ~ordered)
    return float(bits.view(np.float32)[0])
