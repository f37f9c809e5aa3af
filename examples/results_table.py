"""Summarise pipeline runs over seeds as docs/results/experiments.md's table (`make experiment` writes it).

    make -f examples/pipeline.mk OUT=exp/seed0 SEED=0   # ... and seeds 1, 2
    python examples/results_table.py exp/seed0 exp/seed1 exp/seed2

Per learner: final zero-shot top-1 and retrieval R@1 (mean ± std over seeds), the first evaluated step at
which it reached the uniform learner's final top-1 (per seed), the total FLOPs spent by then with everything
counted (its own training to that step plus everything upstream: the reference's training and scoring, an
early learner's for offline learnability; `curate.cost` follows what the artefacts record), that as a
ratio to uniform's total, and its total FLOPs and seconds at the end; beside the total, the same with the
reference given (a model one already has: its scoring of the crawl charged, its training not; an early
learner's training stays charged, `Lineage.without_reference_training`). Then, per seed, how far the
compute-matched uniform runs (uniform-Kx, K times the steps) get: where uniform reaches JEST's final top-1,
as a multiple of JEST's total FLOPs.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import numpy as np

from curate.cost import cost_at_steps, lineage
from curate.train.run import read_metrics

LEARNERS = (
    "uniform",
    "uniform-3x",
    "uniform-5x",
    "random",
    "clipscore",
    "negclip",
    "independent",
    "jest",
    "jest-set",
    "learnability",
    "online",
    "flexi",
    "jest-mask",
    "learnability-mask",
    "independent-dedup",
    "jest-dedup",
    "jest-mask-dedup",
)
LABELS = {
    "uniform": "uniform (IID, whole crawl)",
    "uniform-3x": "uniform, 3× the steps",
    "uniform-5x": "uniform, 5× the steps",
    "random": "offline random 20% (batches)",
    "clipscore": "CLIP-score filter, top 20% (batches)",
    "negclip": "negCLIPLoss filter, top 20% (batches)",
    "independent": "offline independent, easy (batches)",
    "jest": "offline JEST, easy (batches)",
    "jest-set": "offline JEST, easy (shuffled set)",
    "learnability": "offline JEST, learnability (batches)",
    "online": "online JEST, learnability",
    "flexi": "Flexi online JEST (score and half of training at half size), compute-matched to online",
    "jest-mask": "offline JEST, easy, false negatives masked (batches)",
    "learnability-mask": "offline JEST, learnability, false negatives masked (batches)",
    "independent-dedup": "offline independent, easy, after dedup (batches)",
    "jest-dedup": "offline JEST, easy, after dedup (batches)",
    "jest-mask-dedup": "offline JEST, easy, false negatives masked, after dedup (batches)",
}
JEST = "jest"


class Learner:
    """One run of one seed: its evals and its cost with everything counted, and with the reference given."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.evals = [m for m in read_metrics(folder) if "eval" in m]
        self.cost = lineage(folder)
        steps = np.array([e["step"] for e in self.evals])
        own_flops, _ = cost_at_steps(folder, steps)
        self.flops_at = {
            given: dict(zip(steps.tolist(), (own_flops + inherited.flops).tolist(), strict=True))
            for given, inherited in (
                (False, self.cost.inherited),
                (True, self.cost.inherited_reference_given),
            )
        }

    def total_flops(self, reference_given: bool = False) -> float:
        return (self.cost.without_reference_training if reference_given else self.cost.total).flops

    def final(self, metric: str = "zeroshot_top1") -> float:
        return self.evals[-1]["eval"][metric]

    def curve(self, reference_given: bool = False) -> list[tuple[int, float, float]]:
        """(step, top-1, total FLOPs by then) at every eval, in either accounting."""
        at = self.flops_at[reference_given]
        return [(e["step"], e["eval"]["zeroshot_top1"], at[e["step"]]) for e in self.evals]

    def reach(self, target: float, reference_given: bool = False) -> tuple[int, float] | None:
        """The first eval step at which top-1 reached `target`, and the total FLOPs spent by then."""
        for step, top1, flops in self.curve(reference_given):
            if top1 >= target:
                return step, flops
        return None


def spread(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def spread_e(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2e}"
    return f"{statistics.mean(values):.2e} ± {statistics.stdev(values):.1e}"


def ratio_cell(flops: list[float | None], base: list[float]) -> str:
    """Mean FLOPs and mean ratio to the baseline's over the seeds that reached; n/N when some did not."""
    pairs = [(f, b) for f, b in zip(flops, base, strict=True) if f is not None]
    if not pairs:
        return "not reached"
    mean = statistics.mean(f for f, _ in pairs)
    ratio = spread([f / b for f, b in pairs], 2)
    missing = f" ({len(pairs)} of {len(flops)} seeds)" if len(pairs) < len(flops) else ""
    return f"{mean:.2e} ({ratio}×){missing}"


def main(outs: list[Path]) -> None:
    names = [n for n in LEARNERS if all((out / "runs" / n / ".done").exists() for out in outs)]
    runs = {n: [Learner(out / "runs" / n) for out in outs] for n in names}
    uniform = runs["uniform"]
    targets = [u.final() for u in uniform]
    base_flops = [u.cost.total.flops for u in uniform]
    base_seconds = [u.cost.total.seconds for u in uniform]
    steps = uniform[0].evals[-1]["step"]
    print(
        f"| learner ({len(outs)} seeds, {steps} steps unless said) | zero-shot top-1 | per seed "
        "| image→text R@1 | text→image R@1 | step reaching uniform's final top-1 (per seed) "
        "| total FLOPs by then (× uniform's total) | total FLOPs (× uniform's) "
        "| total FLOPs, reference given (× uniform's) | total seconds (× uniform's) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        seeds = runs[name]
        top1 = [r.final() for r in seeds]
        reached = [r.reach(t) for r, t in zip(seeds, targets, strict=True)]
        flops = [r.cost.total.flops for r in seeds]
        given = [r.cost.without_reference_training.flops for r in seeds]
        seconds = [r.cost.total.seconds for r in seeds]
        print(
            f"| {LABELS[name]} | {spread(top1)} | {', '.join(f'{v:.3f}' for v in top1)} "
            f"| {spread([r.final('image_to_text_r1') for r in seeds])} "
            f"| {spread([r.final('text_to_image_r1') for r in seeds])} "
            f"| {', '.join(str(r[0]) if r else '—' for r in reached)} "
            f"| {ratio_cell([r[1] if r else None for r in reached], base_flops)} "
            f"| {ratio_cell(flops, base_flops)} | {ratio_cell(given, base_flops)} "
            f"| {ratio_cell(seconds, base_seconds)} |"
        )
    gaps = sorted({gap for seeds in runs.values() for r in seeds for gap in r.cost.gaps})
    for gap in gaps:
        print(f"\ncost not complete (a lower bound): {gap}")
    if JEST in runs:
        print()
        jest = runs[JEST]
        for other in ("clipscore", "jest-set", "independent", "uniform", "jest-mask", "jest-dedup"):
            if other in runs:
                wins = [a.final() > b.final() for a, b in zip(jest, runs[other], strict=True)]
                print(
                    f"JEST (batches) strictly above {LABELS[other]} in {sum(wins)} of {len(wins)} seeds "
                    f"({', '.join('yes' if w else 'no' for w in wins)})"
                )
        for longer in (n for n in names if n.startswith("uniform-")):
            print(f"\n{LABELS[longer]} against JEST's final top-1, everything counted:")
            for seed, (j, u) in enumerate(zip(jest, runs[longer], strict=True)):
                total = j.cost.total.flops
                reach = u.reach(j.final())
                if reach:
                    print(
                        f"  seed {seed}: uniform reaches JEST's {j.final():.3f} at step {reach[0]}, after "
                        f"{reach[1]:.2e} FLOPs: {reach[1] / total:.2f}× JEST's total ({total:.2e})"
                    )
                else:
                    print(
                        f"  seed {seed}: uniform ends at {u.final():.3f}, below JEST's {j.final():.3f}: not "
                        f"within {u.cost.total.flops / total:.2f}× JEST's total FLOPs ({total:.2e})"
                    )
            for seed, (j, u) in enumerate(zip(jest, runs[longer], strict=True)):
                shares = []
                for given in (False, True):
                    reach = j.reach(u.final(), reference_given=given)
                    share = (
                        f"{reach[1] / u.cost.total.flops:.2f}× its total FLOPs" if reach else "not reached"
                    )
                    shares.append(f"{share} ({'reference given' if given else 'reference training charged'})")
                print(f"  seed {seed}: JEST reaches {longer}'s final {u.final():.3f}: {'; '.join(shares)}")
    if "online" in runs and "flexi" in runs:
        print("\nFlexi online JEST against online JEST, everything counted:")
        for seed, (o, f) in enumerate(zip(runs["online"], runs["flexi"], strict=True)):
            budget = o.cost.total.flops
            reach = f.reach(o.final())
            when = f"does not reach online's {o.final():.3f}"
            if reach:
                when = f"reaches it at step {reach[0]}, after {reach[1] / budget:.2f}× online's total FLOPs"
            print(
                f"  seed {seed}: flexi {f.final():.3f} with {f.cost.total.flops / budget:.2f}× online's "
                f"total FLOPs, online {o.final():.3f}; flexi {when}"
            )
    reference = [Learner(out / "runs" / "reference") for out in outs]
    scoring = [next(p for p in r.cost.upstream if p.kind == "scoring") for r in runs.get(JEST, [])]
    own = [r.cost.own.cost for r in reference]
    line = (
        f"\nreference (curated set): zero-shot top-1 {spread([r.final() for r in reference])}, trained with "
        f"{spread_e([c.flops for c in own])} FLOPs in {spread([c.seconds for c in own], 0)} s"
    )
    if scoring:
        line += (
            f"; scored the crawl with {spread_e([p.cost.flops for p in scoring])} FLOPs in "
            f"{spread([p.cost.seconds for p in scoring], 0)} s"
        )
    print(line)


if __name__ == "__main__":
    main([Path(arg) for arg in sys.argv[1:]])
