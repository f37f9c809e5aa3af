"""How learnable a batch JEST draws in N chunks is, against the Gibbs oracle (the paper's Fig. 2 middle).

    python examples/chunks_vs_gibbs.py SEED/scores/reference SEED/scores/learner --chunks 1 2 4 16 \
        --seed 0 -o SEED/chunks.json            # `make paper` runs it once per seed (examples/paper.mk)

Selection only, nothing is trained. From the samples both score folders hold (eligible in each, joined on
key) it draws K seeded super-batches of B = b / (1 - F) samples, builds the learnability criterion A_ij =
learner loss - reference loss from the two models' embeddings (`curate.jest.pair_scores`, as `curate
select --criterion learnability` does) and, on each super-batch, scores the batch of b that each of these
picks: a uniformly random batch; independent selection (`select --method independent`: b drawn from
softmax(A_kk / tau), no cross terms) and the b best by their own score A_kk; JEST in N chunks for each N
given (`sample_jest`, as `select --method jest --chunks N`); and the Gibbs oracle.

The oracle: JEST approximates sampling a batch S of b with probability proportional to exp(score(S) / tau),
score(S) = the sum of A_ij over i, j in S, by drawing it in N chunks, each chunk conditioned on the ones
before it. The oracle samples that same distribution without the approximation: Metropolis chains that
propose swapping one member for one non-member (`curate.jest.oracle.gibbs_subsets`, exact in the limit of a
long chain). Its post-burn-in mean is what exact joint sampling gives; its best state is how far a search
gets. Recorded too: the mean over the later half of the kept states, which agrees with the whole mean
when the chains have mixed.

A batch's learnability is score(S) / b^2, the mean of A_ij over its b x b pairs: the unit of `selected_score`
in select's summary.json. At b = 64, F = 0.8 (B = 320) and K = 16 it runs in about a minute on 2 cores.
The JSON is written under a temporary name and renamed, so a killed run leaves no half file.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from curate.fileio import write_bytes_atomic
from curate.jest import (
    PairEmbeddings,
    PairScores,
    pair_scores,
    sample_independent,
    sample_jest,
    sample_random,
    sample_topk,
    selection_size,
)
from curate.jest.oracle import dense_matrix, gibbs_subsets, matrix_subset_score
from curate.score.schema import embeddings_numpy, open_score_folder

TEMPERATURE = 1.0  # select's default
# Streams of one super-batch's draws, so adding a method never changes another's.
RANDOM, INDEPENDENT, JEST, GIBBS = range(4)


@dataclass(frozen=True)
class GibbsSettings:
    chains: int = 16
    steps: int = 6000
    burn_in: int = 3000


@dataclass(frozen=True)
class Pool:
    """The samples both folders hold, row i the same key in each model's embeddings."""

    keys: list[str]
    reference: PairEmbeddings
    learner: PairEmbeddings

    def __len__(self) -> int:
        return len(self.keys)

    def scores(self, rows: np.ndarray) -> PairScores:
        index = torch.from_numpy(rows)
        return pair_scores("learnability", _take(self.reference, index), _take(self.learner, index))


def _take(embeddings: PairEmbeddings, rows: torch.Tensor) -> PairEmbeddings:
    return PairEmbeddings(
        embeddings.image[rows], embeddings.text[rows], embeddings.logit_scale, embeddings.logit_bias
    )


def read_embeddings(folder: str | Path) -> tuple[pa.Table, PairEmbeddings]:
    """A score folder's eligible rows (key, then nothing else) and its model's embeddings of them."""
    scores = open_score_folder(folder)
    table = scores.read_columns(["key", "image_emb", "text_emb"], eligible_only=True)
    image, text = (
        torch.from_numpy(embeddings_numpy(table[c]).astype(np.float32)) for c in ("image_emb", "text_emb")
    )
    meta = scores.metadata
    return table.select(["key"]), PairEmbeddings(image, text, meta.logit_scale, meta.logit_bias)


def joined_pool(reference: str | Path, learner: str | Path) -> Pool:
    """The keys eligible in both folders, in the reference folder's order (a key repeated: its first row)."""
    ref_keys, ref = read_embeddings(reference)
    lrn_keys, lrn = read_embeddings(learner)
    learner_row = {}
    for row, key in enumerate(lrn_keys["key"].to_pylist()):
        learner_row.setdefault(key, row)
    seen: set[str] = set()
    keys, ref_rows, lrn_rows = [], [], []
    for row, key in enumerate(ref_keys["key"].to_pylist()):
        if key in learner_row and key not in seen:
            seen.add(key)
            keys.append(key)
            ref_rows.append(row)
            lrn_rows.append(learner_row[key])
    return Pool(keys, _take(ref, torch.tensor(ref_rows)), _take(lrn, torch.tensor(lrn_rows)))


def draw_super_batches(pool_size: int, size: int, count: int, seed: int) -> list[np.ndarray]:
    """`count` disjoint super-batches of `size` rows from a seeded permutation (fewer when the pool is
    short; none is an error)."""
    fit = min(count, pool_size // size)
    if fit < 1:
        raise SystemExit(
            f"a super-batch of {size} needs {size} samples in both folders; they share {pool_size}"
        )
    order = np.random.default_rng(seed).permutation(pool_size)
    return [np.sort(order[i * size : (i + 1) * size]) for i in range(fit)]


def generator(seed: int, super_batch: int, stream: int) -> torch.Generator:
    words = np.random.SeedSequence([seed, super_batch, stream]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(words >> 1))


def batch_learnability(matrix: torch.Tensor, indices: torch.Tensor) -> float:
    """score(S) / b^2: the mean of A_ij over the batch's b x b pairs."""
    return float(matrix_subset_score(matrix, indices)) / len(indices) ** 2


def measure(
    scores: PairScores, size: int, chunk_counts: list[int], gibbs: GibbsSettings, seed: int, index: int
) -> dict:
    """One super-batch: each method's batch learnability (see the module docstring)."""
    matrix = dense_matrix(scores)
    common = {"temperature": TEMPERATURE}
    result = {
        "random": sample_random(scores, size, generator=generator(seed, index, RANDOM), **common),
        "independent": sample_independent(
            scores, size, generator=generator(seed, index, INDEPENDENT), **common
        ),
        "top_own_score": sample_topk(scores, size),
    }
    learnability = {name: batch_learnability(matrix, s.indices) for name, s in result.items()}
    learnability["jest"] = {
        str(n): batch_learnability(
            matrix,
            sample_jest(scores, size, chunks=n, generator=generator(seed, index, JEST), **common).indices,
        )
        for n in chunk_counts
    }
    states = (
        gibbs_subsets(
            matrix,
            size,
            temperature=TEMPERATURE,
            chains=gibbs.chains,
            steps=gibbs.steps,
            burn_in=gibbs.burn_in,
            generator=generator(seed, index, GIBBS),
        )
        / size**2
    )
    later = states[len(states) // 2 :]  # kept states are in step order, `chains` a step
    learnability |= {
        "gibbs_mean": float(states.mean()),
        "gibbs_later_half_mean": float(later.mean()),
        "gibbs_best": float(states.max()),
    }
    return learnability


def averaged(results: list[dict]) -> dict:
    """The mean over super-batches of every number, nested as in each result."""
    first = results[0]
    return {
        name: averaged([r[name] for r in results]) if isinstance(first[name], dict)
        else float(np.mean([r[name] for r in results]))
        for name in first
    }  # fmt: skip


def run(
    reference: str,
    learner: str,
    chunk_counts: list[int],
    seed: int,
    super_batches: int,
    ratio: float,
    batch_size: int,
    gibbs: GibbsSettings,
) -> dict:
    started = time.perf_counter()
    size_b = round(batch_size / (1.0 - ratio))  # B, as select's --batch-size implies it
    size = selection_size(size_b, ratio, max(chunk_counts))
    pool = joined_pool(reference, learner)
    results = []
    for index, rows in enumerate(draw_super_batches(len(pool), size_b, super_batches, seed)):
        results.append(measure(pool.scores(rows), size, chunk_counts, gibbs, seed, index))
    return {
        "parameters": {
            "reference": str(Path(reference).absolute()),
            "learner": str(Path(learner).absolute()),
            "criterion": "learnability",
            "batch_size": size,
            "ratio": ratio,
            "super_batch": size_b,
            "super_batches": len(results),
            "pool": len(pool),
            "chunks": chunk_counts,
            "temperature": TEMPERATURE,
            "seed": seed,
            "gibbs": {"chains": gibbs.chains, "steps": gibbs.steps, "burn_in": gibbs.burn_in},
        },
        "unit": "batch learnability: score(S) / b^2, the mean of A_ij over the b x b pairs "
        "(select's selected_score)",
        "oracle": "Metropolis swap chains targeting exp(score(S) / tau) over batches of b (gibbs_subsets): "
        "the distribution JEST approximates in N chunks; mean and best over the post-burn-in states",
        "mean": averaged(results),
        "super_batch_results": results,
        "seconds": round(time.perf_counter() - started, 3),
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("reference", help="the reference's score folder")
    parser.add_argument("learner", help="the learner's score folder (an early checkpoint's)")
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 2, 4, 16])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--super-batches", type=int, default=16, help="K super-batches")
    parser.add_argument("--ratio", type=float, default=0.8, help="filter ratio F")
    parser.add_argument("--batch-size", type=int, default=64, help="b; B = b / (1 - F)")
    parser.add_argument("--gibbs-steps", type=int, default=GibbsSettings.steps)
    parser.add_argument("--gibbs-chains", type=int, default=GibbsSettings.chains)
    parser.add_argument("-o", "--output", required=True, help="the JSON to write")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    gibbs = GibbsSettings(args.gibbs_chains, args.gibbs_steps, args.gibbs_steps // 2)
    result = run(
        args.reference, args.learner, sorted(set(args.chunks)), args.seed, args.super_batches, args.ratio,
        args.batch_size, gibbs,
    )  # fmt: skip
    write_bytes_atomic(args.output, (json.dumps(result, indent=1) + "\n").encode())
    mean = result["mean"]
    jest = ", ".join(f"N={n} {v:.4f}" for n, v in mean["jest"].items())
    print(
        f"{args.output}: {result['parameters']['super_batches']} super-batches in {result['seconds']:.0f} s; "
        f"batch learnability random {mean['random']:.4f}, independent {mean['independent']:.4f}, "
        f"JEST {jest}, "
        f"Gibbs mean {mean['gibbs_mean']:.4f} (best {mean['gibbs_best']:.4f})"
    )


if __name__ == "__main__":
    main()
