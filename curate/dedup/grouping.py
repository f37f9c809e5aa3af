"""The math of `curate dedup` (SemDeDup): spherical k-means, nearest centroids, near-duplicate groups.

Pure functions of tensors and a `torch.Generator`: no files, no global state. Embeddings are float32 rows
of unit length on any device; what comes back to the caller as a group or a choice is a CPU numpy array.

Every sum that decides an outcome is taken in a fixed order (no `index_add_`, whose CUDA kernel adds in
whatever order its atomics land), so the same rows and seed give the same centroids, assignments and groups.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components

BLOCK = 4096  # rows per tile of a cosine matrix: a tile is BLOCK × BLOCK float32, 64 MiB
MAX_EDGES = 1 << 23  # pairs held before they are folded into components (8M pairs, 64 MiB of int32 pairs)


def normalise(rows: torch.Tensor) -> torch.Tensor:
    """Rows of unit length, in float32 (score files store fp16 rows, normalised before rounding)."""
    return torch.nn.functional.normalize(rows.float(), dim=1)


def nearest(rows: torch.Tensor, centroids: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """Index of each row's nearest centroid by cosine (both unit rows), as int64 on the rows' device."""
    parts = [(rows[i : i + block] @ centroids.T).argmax(1) for i in range(0, len(rows), block)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64, device=rows.device)


def centroid_sums(rows: torch.Tensor, assignment: torch.Tensor, k: int, block: int = BLOCK) -> torch.Tensor:
    """Σ of the rows assigned to each of `k` centroids, (k, D): block by block as one-hot products, in a
    fixed order, so the sums are the same bits every run."""
    sums = torch.zeros(k, rows.shape[1], dtype=rows.dtype, device=rows.device)
    for i in range(0, len(rows), block):
        one_hot = torch.nn.functional.one_hot(assignment[i : i + block], k).to(rows.dtype)
        sums += one_hot.T @ rows[i : i + block]
    return sums


def kmeans(
    rows: torch.Tensor, k: int, generator: torch.Generator, iterations: int = 20, block: int = BLOCK
) -> torch.Tensor:
    """Spherical k-means (cosine): `k` unit centroids, (k, D), started from `k` distinct rows drawn by
    `generator` (a CPU generator) and refined until no row changes centroid or `iterations` have run.
    A centroid left without rows keeps its place, so k centroids always come back (k ≤ len(rows))."""
    if not 1 <= k <= len(rows):
        raise ValueError(f"k-means needs 1 <= k <= rows, got k={k} for {len(rows)} rows")
    start = torch.randperm(len(rows), generator=generator)[:k].to(rows.device)
    centroids = rows[start].clone()
    assignment = nearest(rows, centroids, block)
    for _ in range(iterations):
        sums = centroid_sums(rows, assignment, k, block)
        filled = sums.norm(dim=1) > 0
        centroids = torch.where(filled[:, None], normalise(sums), centroids)
        moved = nearest(rows, centroids, block)
        if torch.equal(moved, assignment):
            break
        assignment = moved
    return centroids


def near_duplicate_groups(
    rows: torch.Tensor, threshold: float, block: int = BLOCK, max_edges: int = MAX_EDGES
) -> np.ndarray:
    """Group id of each row (numpy int64, 0..G-1 in order of each group's first row): two rows share a
    group when a chain of pairs with cosine > `threshold` joins them (connected components).

    The cosine matrix is never whole: tiles of `block` rows over the upper triangle give the pairs above
    the threshold, and whenever more than `max_edges` pairs are held they are folded into the components
    found so far (each row then links to its component's first row alone). Memory is one tile plus
    `max_edges` pairs, however many duplicates a cluster holds. A cosine is clamped to [-1, 1], so
    `threshold` 1 groups nothing, not even identical rows.
    """
    n = len(rows)
    labels = np.arange(n, dtype=np.int64)
    held: list[tuple[np.ndarray, np.ndarray]] = []
    count = 0
    for i in range(0, n, block):
        for j in range(i, n, block):
            cosine = (rows[i : i + block] @ rows[j : j + block].T).clamp_(-1.0, 1.0)
            if i == j:  # each pair once, never a row with itself (the zeros left never pass: T > 0)
                cosine = cosine.triu(diagonal=1)
            a, b = torch.nonzero(cosine > threshold, as_tuple=True)
            if len(a):
                held.append(((a + i).cpu().numpy(), (b + j).cpu().numpy()))
                count += len(a)
            if count > max_edges:
                labels, held, count = _fold(labels, held), [], 0
    return _fold(labels, held)


def _fold(labels: np.ndarray, held: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Components of the pairs `held` together with those `labels` already joined, numbered by first row."""
    n = len(labels)
    first = _first_rows(labels)
    sources = [np.arange(n), *(a for a, _ in held)]
    targets = [first, *(b for _, b in held)]
    graph = coo_array(
        (np.ones(sum(len(s) for s in sources), np.int8), (np.concatenate(sources), np.concatenate(targets))),
        shape=(n, n),
    )
    _, components = connected_components(graph, directed=False)
    return _renumbered(components)


def _first_rows(labels: np.ndarray) -> np.ndarray:
    """For each row, the first row of its group."""
    _, first_index, inverse = np.unique(labels, return_index=True, return_inverse=True)
    return first_index[inverse]


def _renumbered(labels: np.ndarray) -> np.ndarray:
    """Group ids 0..G-1 in order of each group's first row (scipy numbers them by its own traversal)."""
    first = _first_rows(labels)
    _, ids = np.unique(first, return_inverse=True)
    return ids.astype(np.int64)


def keepers(groups: np.ndarray, similarity: np.ndarray) -> np.ndarray:
    """Boolean mask of the one row kept per group: the highest `similarity` (image–text cosine), and of
    equals the first row (callers pass rows in file, row order, so that is the first in the crawl)."""
    order = np.lexsort((np.arange(len(groups)), -similarity.astype(np.float64), groups))
    first = np.ones(len(order), bool)
    first[1:] = groups[order][1:] != groups[order][:-1]
    keep = np.zeros(len(groups), bool)
    keep[order[first]] = True
    return keep
