"""128-bit sample ids: DataComp's uids as its subset files hold them, and any other key hashed to 128 bits.

A DataComp uid is 32 hex digits; its filtering track's subset file is a NumPy array of dtype `u8,u8`, each
record (int(uid[:16], 16), int(uid[16:], 16)), sorted, which DataComp's resharder searches with
`np.searchsorted`. A structured array sorts by its first field, then its second: the uid's numeric order.
Keys that are not uids (LAION's img2dataset keys, urls) are matched by a 128-bit BLAKE2b digest instead,
so both kinds sort and search the same way.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.errors import CurateError

UID = np.dtype("u8,u8")
UID_DIGITS = 32
_NIBBLES = np.full(256, 255, np.uint8)  # ASCII -> hex digit value (255: not a hex digit)
for _digit, _char in enumerate("0123456789abcdef"):
    _NIBBLES[ord(_char)] = _NIBBLES[ord(_char.upper())] = _digit
_SHIFTS = np.arange(60, -1, -4, dtype=np.uint64)  # the 16 nibbles of a u8, most significant first


def uid_records(uids: pa.Array | pa.ChunkedArray, what: str) -> np.ndarray:
    """DataComp uids (strings of 32 hex digits) as `u8,u8` records, in their order; anything else is a
    one-line error naming `what` and the first bad value."""
    column = pc.cast(uids, pa.string())
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lengths = pc.fill_null(pc.binary_length(column), -1).to_numpy(zero_copy_only=False)
    digits = np.zeros((len(column), UID_DIGITS), np.uint8)
    good = lengths == UID_DIGITS
    if good.all() and len(column):
        offsets = np.frombuffer(column.buffers()[1], np.int32)[
            column.offset : column.offset + len(column) + 1
        ]
        data = np.frombuffer(column.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
        digits = _NIBBLES[data.reshape(len(column), UID_DIGITS)]
        good = (digits != 255).all(axis=1)
    if not good.all():
        bad = column[int(np.flatnonzero(~good)[0])].as_py()
        raise CurateError(f"{what}: {bad!r} is not a DataComp uid (32 hex digits)")
    records = np.empty(len(column), UID)
    nibbles = digits.astype(np.uint64)
    # The nibbles of one u8 occupy disjoint bits, so their sum is their bitwise or: no carry, no overflow.
    records["f0"] = (nibbles[:, :16] << _SHIFTS).sum(axis=1, dtype=np.uint64)
    records["f1"] = (nibbles[:, 16:] << _SHIFTS).sum(axis=1, dtype=np.uint64)
    return records


def hashed_records(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Any strings as `u8,u8` records of their 128-bit BLAKE2b digests (nulls are the empty string's)."""
    digests = b"".join(
        hashlib.blake2b((value or "").encode(), digest_size=16).digest() for value in values.to_pylist()
    )
    pairs = np.frombuffer(digests, ">u8").reshape(-1, 2)
    records = np.empty(len(pairs), UID)
    records["f0"], records["f1"] = pairs[:, 0], pairs[:, 1]
    return records


def sample_ids(values: pa.Array | pa.ChunkedArray, column: str, what: str) -> np.ndarray:
    """The 128-bit ids `--shards` is matched by: a uid column's own value, any other column's digest."""
    return uid_records(values, what) if column == "uid" else hashed_records(values)
