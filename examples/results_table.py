"""Summarise demo runs over seeds as the README's results table.

    make -f examples/pipeline.mk OUT=demo-seed0 SEED=0   # ... and seeds 1, 2
    python examples/results_table.py demo-seed0 demo-seed1 demo-seed2

For each learner: final zero-shot top-1 and retrieval R@1 (mean ± std over seeds), the first evaluated
step at which it reached the uniform learner's final top-1 (per seed), its training wall time, and that
time plus what its selection cost: training the reference and scoring the crawl with it (the `.done` stamps
of `scores/` hold the scoring seconds) for every learner that uses reference scores, and scoring the crawl
with the early learner too for offline learnability.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from curate.train.run import read_config, read_metrics

LEARNERS = (
    "uniform",
    "random",
    "clipscore",
    "negclip",
    "independent",
    "jest",
    "jest-set",
    "learnability",
    "online",
)
# What each learner's data cost beyond its own training: the reference (trained, then scoring the crawl)
# and, for offline learnability, the early learner's scores of the crawl. Random needs no scores.
USES_SCORES = {
    "uniform": (),
    "random": (),
    "clipscore": ("reference",),
    "negclip": ("reference",),
    "independent": ("reference",),
    "jest": ("reference",),
    "jest-set": ("reference",),
    "learnability": ("reference", "learner"),
    "online": ("reference",),
}
LABELS = {
    "uniform": "uniform (IID, whole crawl)",
    "random": "offline random 20% (batches)",
    "clipscore": "CLIP-score filter, top 20% (batches)",
    "negclip": "negCLIPLoss filter, top 20% (batches)",
    "independent": "offline independent, easy (batches)",
    "jest": "offline JEST, easy (batches)",
    "jest-set": "offline JEST, easy (shuffled set)",
    "learnability": "offline JEST, learnability (batches)",
    "online": "online JEST, learnability",
}


def run_metrics(out: Path, run: str) -> tuple[list[dict], list[dict]]:
    """A run's log records (each with the run's batch size) and its eval records."""
    folder = out / "runs" / run
    records, batch = read_metrics(folder), read_config(folder).batch_size
    logs = [{**m, "batch_size": batch} for m in records if "loss" in m]
    return logs, [m for m in records if "eval" in m]


def train_seconds(logs: list[dict]) -> float:
    """Steps × batch over the run's average rate (measured from its first step: decoding not included)."""
    last = logs[-1]
    return last["step"] * last["batch_size"] / last["samples_per_s"]


def scoring_seconds(out: Path, scores: str) -> float:
    return float((out / "scores" / scores / ".done").read_text())


def spread(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main(outs: list[Path]) -> None:
    columns = ("top1", "i2t", "t2i", "reach", "seconds", "total")
    learners = [
        name for name in LEARNERS if all((out / "runs" / name / "latest.pt").exists() for out in outs)
    ]
    rows = {name: {column: [] for column in columns} for name in learners}
    for out in outs:
        reference_cost = train_seconds(run_metrics(out, "reference")[0])
        cost = {"reference": reference_cost + scoring_seconds(out, "reference")}
        cost["learner"] = scoring_seconds(out, "learner")
        _, uniform_evals = run_metrics(out, "uniform")
        target = uniform_evals[-1]["eval"]["zeroshot_top1"]
        for name in learners:
            logs, evals = run_metrics(out, name)
            final = evals[-1]["eval"]
            rows[name]["top1"].append(final["zeroshot_top1"])
            rows[name]["i2t"].append(final["image_to_text_r1"])
            rows[name]["t2i"].append(final["text_to_image_r1"])
            reached = next((e["step"] for e in evals if e["eval"]["zeroshot_top1"] >= target), None)
            rows[name]["reach"].append(str(reached) if reached else "—")
            rows[name]["seconds"].append(train_seconds(logs))
            rows[name]["total"].append(train_seconds(logs) + sum(cost[part] for part in USES_SCORES[name]))
    steps = run_metrics(outs[0], "uniform")[0][-1]["step"]
    print(
        f"| learner ({len(outs)} seeds, {steps} steps) | zero-shot top-1 | per seed | image→text R@1 "
        "| text→image R@1 | step reaching uniform's final top-1 (per seed) | training (s) "
        "| with reference and scoring (s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in learners:
        row = rows[name]
        per_seed = ", ".join(f"{v:.3f}" for v in row["top1"])
        print(
            f"| {LABELS[name]} | {spread(row['top1'])} | {per_seed} | {spread(row['i2t'])} "
            f"| {spread(row['t2i'])} | {', '.join(row['reach'])} | {spread(row['seconds'], 0)} "
            f"| {spread(row['total'], 0)} |"
        )
    if "jest" in rows:
        print()
        for other in ("clipscore", "jest-set", "independent", "uniform"):
            if other in rows:
                wins = [a > b for a, b in zip(rows["jest"]["top1"], rows[other]["top1"], strict=True)]
                print(
                    f"JEST (batches) strictly above {LABELS[other]} in {sum(wins)} of {len(wins)} seeds "
                    f"({', '.join('yes' if w else 'no' for w in wins)})"
                )
    reference = [run_metrics(out, "reference") for out in outs]
    top1 = [evals[-1]["eval"]["zeroshot_top1"] for _, evals in reference]
    seconds = [train_seconds(logs) for logs, _ in reference]
    scoring = [scoring_seconds(out, "reference") for out in outs]
    print(
        f"\nreference (curated set): zero-shot top-1 {spread(top1)}, trained in {spread(seconds, 0)} s, "
        f"scored the crawl in {spread(scoring, 0)} s"
    )


if __name__ == "__main__":
    main([Path(arg) for arg in sys.argv[1:]])
