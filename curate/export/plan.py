"""The export's plan: every chosen sample in training order with its name in the output, and the part of it
that a run still has to write, grouped by the source shard that holds it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from curate.errors import CurateError
from curate.select.manifest import read_manifest
from curate.shards.schema import is_safe_key


class Planned(NamedTuple):
    """One row of the plan: a sample, the batch that trains on it, and its name in the output."""

    source: str
    key: str
    batch: int
    name: str
    sha256: str | None  # of its image as scored; None in manifests from before it was recorded


class Slot(NamedTuple):
    """Where one occurrence of a chosen key goes: output shard, position in it, name, batch."""

    output: int
    position: int
    name: str
    batch: int


@dataclass
class PendingWork:
    """The plan rows of the output shards still to write, as the source-by-source pass needs them."""

    wanted: dict[str, dict[str, list[Slot]]]  # source shard -> key -> its occurrences still to write
    digests: dict[tuple[str, str], str | None]  # (source shard, key) -> its image's sha256 as scored
    # source shard -> the pending output shards that need no later source (in name order) than it
    ready_after: dict[str, list[int]]


def read_plan(manifest: str) -> list[Planned]:
    """Every chosen sample in training order (batch, then the manifest's row order): the export's order."""
    table = read_manifest(manifest, ["key", "shard", "batch", "sha256"])
    order = pa.array(np.argsort(table["batch"].to_numpy(), kind="stable"))
    table = table.take(order)
    keys = table["key"].to_pylist()
    for key in keys:
        if "." in key or not is_safe_key(key):  # what the shard readers refuse as dotted_key or unsafe_key
            raise CurateError(f"manifest key {key!r} cannot be a tar member name (no '.', '/' or '\\\\')")
    sources, batches, digests = (table[c].to_pylist() for c in ("shard", "batch", "sha256"))
    names = exported_names(keys)
    return [Planned(*row) for row in zip(sources, keys, batches, names, digests, strict=True)]


def exported_names(keys: Sequence[str]) -> list[str]:
    """The output name of each occurrence of `keys` (in plan order): the key itself the first time, then
    `{key}_1`, `{key}_2`, ... A suffix that would make another manifest key's name (or an earlier repeat's)
    is skipped, so the names are unique whatever the keys: ("a", "a_1", "a") gives "a", "a_1", "a_2"."""
    taken = set(keys)
    suffixes: dict[str, int] = {}  # key -> the last suffix it used (0: only its first occurrence so far)
    names = []
    for key in keys:
        if key not in suffixes:
            suffixes[key] = 0
            names.append(key)
            continue
        n = suffixes[key] + 1
        while f"{key}_{n}" in taken:
            n += 1
        suffixes[key] = n
        taken.add(f"{key}_{n}")
        names.append(f"{key}_{n}")
    return names


def pending_work(plan: list[Planned], pending: list[int], per_shard: int) -> PendingWork:
    """Output shard i holds plan rows [i·K, (i+1)·K): the rows of the `pending` ones, by source shard."""
    wanted: dict[str, dict[str, list[Slot]]] = {}
    digests: dict[tuple[str, str], str | None] = {}
    last_source: dict[int, str] = {}  # pending output shard -> the last source (in name order) it needs
    for i in pending:
        for position, row in enumerate(plan[i * per_shard : (i + 1) * per_shard]):
            slot = Slot(i, position, row.name, row.batch)
            wanted.setdefault(row.source, {}).setdefault(row.key, []).append(slot)
            digests[row.source, row.key] = row.sha256
            last_source[i] = max(last_source.get(i, row.source), row.source)
    ready_after: dict[str, list[int]] = {}
    for i, source in sorted(last_source.items()):
        ready_after.setdefault(source, []).append(i)
    return PendingWork(wanted, digests, ready_after)


def rows_of(output: int, per_shard: int, total: int) -> int:
    """How many plan rows output shard `output` holds: `per_shard`, fewer in the last one."""
    return min(per_shard, total - output * per_shard)
