"""The paper's further claims, measured: a verdict per claim and the tables behind it (`make paper`).

    python examples/paper_tables.py paper/seed0 paper/seed1 paper/seed2 --figures paper/figures

Reads the folders examples/paper.mk writes per seed: the pipeline's runs and manifests (F = 0.8, 200 steps),
`ratio-F/` (JEST and independent at another F), `steps-K/` (uniform, JEST and the CLIP-score filter with a
K-step schedule), `big/` (siglip-small learners steered by the siglip-tiny reference) and `chunks.json`
(examples/chunks_vs_gibbs.py). Prints markdown: the claims (what the paper reports, what curate measured,
mean ± std over the seeds and per seed, and "holds", "holds in k of n seeds" or "does not hold here"), then
the tables: top-1 and batch scores against F, batch learnability against chunks, the bigger learner, and
every budget's top-1 and total FLOPs in two accountings. "Reference's training charged" counts everything
upstream (`Lineage.total`); "reference given" is a reference one already has: its scoring of the crawl is
charged, its training is not (`Lineage.without_reference_training`). `--figures DIR`: chunks.png.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from results_table import Learner, spread

from curate.train.run import read_config

TOP1 = "zero-shot top-1"
CHARGED, GIVEN = "reference's training charged", "reference given"
F_METHODS = {"independent": "independent (easy)", "jest": "JEST (easy)"}
# Selections made at every F but not trained there: their batch learnability is the claim's measure.
SELECTION_ONLY = {"learnability": "JEST (learnability), selection only"}
BUDGET_METHODS = {"uniform": "uniform", "clipscore": "CLIP-score filter", "jest": "JEST (easy)"}
BIG_LEARNERS = ("uniform", "uniform-3x", "clipscore", "jest")
COMPUTE_TARGET = 1 / 3  # JEST to uniform-3x's final top-1 with at most a third of its total FLOPs
# JEST in N chunks is "as learnable as" the oracle when it recovers this share of the oracle's gain over a
# random batch (the Gibbs mean minus random's learnability).
RECOVERED = 0.9


# ---------------------------------------------------------------------------------------------- verdicts


def verdict(holds: Sequence[bool]) -> str:
    """ "holds" (every seed), "holds in k of n seeds" or "does not hold here" (none)."""
    count = sum(bool(h) for h in holds)
    if holds and count == len(holds):
        return "holds"
    if count == 0:
        return "does not hold here"
    return f"holds in {count} of {len(holds)} seeds"


def rises(values: Sequence[float]) -> bool:
    """Strictly increasing."""
    return all(a < b for a, b in zip(values, values[1:], strict=False))


def recovered_share(jest: float, oracle: float, random: float) -> float:
    """The share of the oracle's gain over a random batch that JEST's batch gets (1: as learnable)."""
    gain = oracle - random
    return (jest - random) / gain if gain > 0 else math.nan


def first_reach(
    curves: dict[str, Sequence[tuple[int, float, float]]], target: float
) -> tuple[str, int, float] | None:
    """Of every eval (run label, step, top-1, total FLOPs by then) whose top-1 reached `target`, the one
    that spent the fewest FLOPs: where the curves across budgets first reach it. None: none reached."""
    reached = [
        (flops, label, step)
        for label, curve in curves.items()
        for step, top1, flops in curve
        if top1 >= target
    ]
    if not reached:
        return None
    flops, label, step = min(reached)
    return label, step, flops


@dataclass(frozen=True)
class Claim:
    name: str
    paper: str
    measured: str
    holds: tuple[bool, ...]

    @property
    def verdict(self) -> str:
        return verdict(self.holds)


# ---------------------------------------------------------------------------------------------- markdown


def per_seed(values: Sequence[float | None], digits: int = 3) -> str:
    return ", ".join("—" if v is None else f"{v:.{digits}f}" for v in values)


def mean_e(values: Sequence[float]) -> str:
    return f"{statistics.mean(values):.2e}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def ratio_text(ratios: Sequence[float | None]) -> str:
    reached = [r for r in ratios if r is not None]
    text = spread(reached, 2) if reached else "not reached"
    return f"{text} (per seed {per_seed(ratios, 2)})"


# ---------------------------------------------------------------------------------------------- folders


def done(run: Path) -> bool:
    return (run / ".done").exists()


def learners(seeds: Sequence[Path], *parts: str) -> list[Learner] | None:
    """The run at `parts` under every seed; None unless every seed finished it."""
    runs = [seed.joinpath(*parts) for seed in seeds]
    return [Learner(run) for run in runs] if all(done(run) for run in runs) else None


def summary(manifest: Path) -> dict:
    return json.loads((manifest / "summary.json").read_text())


def ratio_folders(seed: Path) -> dict[float, Path]:
    """F -> the folder whose manifests selected at F: the pipeline's own, and each ratio-F beside it."""
    folders = {}
    for folder in [seed, *sorted(seed.glob("ratio-*"))]:
        if (folder / "manifests/jest/summary.json").is_file():
            folders[float(summary(folder / "manifests/jest")["parameters"]["ratio"])] = folder
    return folders


def budget_folders(seed: Path) -> dict[int, Path]:
    """Steps -> the folder whose uniform, JEST and CLIP-score learners trained that many steps."""
    folders = {}
    for folder in [seed, *sorted(seed.glob("steps-*"))]:
        if done(folder / "runs/uniform"):
            folders[read_config(folder / "runs/uniform").steps] = folder
    return folders


def common(mappings: Sequence[dict]) -> list:
    """The keys every seed has, sorted."""
    return sorted(set.intersection(*(set(m) for m in mappings))) if mappings else []


# ---------------------------------------------------------------------------------------------- F


@dataclass(frozen=True)
class RatioSweep:
    """The F settings of every seed: learners' final top-1 and selections' batch scores, per F, per seed."""

    ratios: list[float]
    top1: dict[str, dict[float, list[float]]]  # learner -> F -> per seed
    selected: dict[str, dict[float, list[float]]]  # manifest -> F -> summary.json selected_score per seed
    random: dict[str, dict[float, list[float]]]  # the same for the random batch
    criteria: dict[str, str]  # manifest -> its criterion


def read_sweep(seeds: Sequence[Path]) -> RatioSweep | None:
    folders = [ratio_folders(seed) for seed in seeds]
    ratios = common(folders)
    if len(ratios) < 2:
        return None
    manifests = [*F_METHODS, *(m for m in SELECTION_ONLY if all_have(folders, ratios, f"manifests/{m}"))]
    top1 = {
        m: {f: [Learner(by_f[f] / "runs" / m).final() for by_f in folders] for f in ratios} for m in F_METHODS
    }
    summaries = {
        m: {f: [summary(by_f[f] / "manifests" / m) for by_f in folders] for f in ratios} for m in manifests
    }
    return RatioSweep(
        ratios,
        top1,
        {
            m: {f: [s["selected_score"] for s in by_f] for f, by_f in per_f.items()}
            for m, per_f in summaries.items()
        },
        {
            m: {f: [s["random_score"] for s in by_f] for f, by_f in per_f.items()}
            for m, per_f in summaries.items()
        },
        {m: per_f[ratios[0]][0]["parameters"]["criterion"] for m, per_f in summaries.items()},
    )


def all_have(folders: Sequence[dict[float, Path]], ratios: Sequence[float], manifest: str) -> bool:
    return all((by_f[f] / manifest / "summary.json").is_file() for by_f in folders for f in ratios)


def ratio_section(seeds: Sequence[Path]) -> tuple[list[str], list[Claim]]:
    sweep = read_sweep(seeds)
    uniform = learners(seeds, "runs/uniform")
    if sweep is None or uniform is None:
        return ["(the filter-ratio settings are not all done)"], []
    return ratio_table(sweep, [u.final() for u in uniform]), ratio_claims(sweep, len(seeds))


def ratio_table(sweep: RatioSweep, uniform_top1: list[float]) -> list[str]:
    rows = [["uniform (all data, no selection)", "—", spread(uniform_top1), per_seed(uniform_top1), "—", "—"]]
    for manifest in sweep.selected:
        label = F_METHODS.get(manifest) or SELECTION_ONLY[manifest]
        for f in sweep.ratios:
            top1 = sweep.top1.get(manifest, {}).get(f)
            rows.append(
                [label, f, spread(top1) if top1 else "— (not trained)", per_seed(top1) if top1 else "—",
                 spread(sweep.selected[manifest][f], 4), spread(sweep.random[manifest][f], 4)]
            )  # fmt: skip
    criteria = ", ".join(f"{F_METHODS.get(m) or SELECTION_ONLY[m]}: {c}" for m, c in sweep.criteria.items())
    return table(
        ["selection", "F", f"{TOP1} (mean ± std)", "per seed", "selected batch score", "random batch score"],
        rows,
    ) + [
        "",
        "Equal learner steps for every trained row. Batch scores are select's summary.json: the mean over "
        "super-batches of the mean A_ij over a batch's b x b pairs under the selection's own criterion "
        f"({criteria}; easy is minus the reference's loss), a random batch of the same size beside it.",
    ]


def ratio_claims(sweep: RatioSweep, seeds: int) -> list[Claim]:
    ratios, top1 = sweep.ratios, sweep.top1
    low, high, below_high = ratios[0], ratios[-1], ratios[-2]
    scored = "learnability" if "learnability" in sweep.selected else "jest"
    selected = sweep.selected[scored]

    def by_f(values: dict[float, list[float]], digits: int = 3) -> str:
        return "; ".join(f"F = {f}: {spread(v, digits)} ({per_seed(v, digits)})" for f, v in values.items())

    return [
        Claim(
            "the learnability of JEST's batches rises with F",
            "Fig. 2 right: the learnability of JEST's batches rises as F goes 0.5 → 0.8 → 0.9",
            f"selected batch score ({sweep.criteria[scored]}) {by_f(selected, 4)}",
            tuple(rises([selected[f][s] for f in ratios]) for s in range(seeds)),
        ),
        Claim(
            "JEST's final accuracy rises with F",
            "Fig. 3 middle: JEST's accuracy rises as F goes 0.5 → 0.8 → 0.9",
            f"JEST top-1 {by_f(top1['jest'])}",
            tuple(rises([top1["jest"][f][s] for f in ratios]) for s in range(seeds)),
        ),
        Claim(
            f"independent selection gains nothing from F (top-1 at F = {high} not above F = {low})",
            "Fig. 3 middle: independent selection does not gain with F",
            f"independent top-1 {by_f(top1['independent'])}",
            tuple(top1["independent"][high][s] <= top1["independent"][low][s] for s in range(seeds)),
        ),
        Claim(
            f"independent selection degrades at high F (top-1 at F = {high} below F = {below_high})",
            "Fig. 3 middle: independent selection degrades at high F",
            f"independent top-1 {by_f({f: top1['independent'][f] for f in (below_high, high)})}",
            tuple(top1["independent"][high][s] < top1["independent"][below_high][s] for s in range(seeds)),
        ),
    ]


# ---------------------------------------------------------------------------------------------- chunks


def chunks_section(seeds: Sequence[Path], figures: Path | None) -> tuple[list[str], list[Claim]]:
    paths = [seed / "chunks.json" for seed in seeds]
    if not all(p.is_file() for p in paths):
        return ["(chunks.json is not there for every seed)"], []
    results = [json.loads(p.read_text()) for p in paths]
    means = [r["mean"] for r in results]
    counts = sorted(int(n) for n in means[0]["jest"])
    params = results[0]["parameters"]
    named = {
        "random batch": [m["random"] for m in means],
        "independent (softmax of own score)": [m["independent"] for m in means],
        "top b by own score": [m["top_own_score"] for m in means],
        **{f"JEST, N = {n} chunks": [m["jest"][str(n)] for m in means] for n in counts},
        "Gibbs oracle, post-burn-in mean": [m["gibbs_mean"] for m in means],
        "Gibbs oracle, later half of the kept states": [m["gibbs_later_half_mean"] for m in means],
        "Gibbs oracle, best state": [m["gibbs_best"] for m in means],
    }
    lines = table(
        ["batch", "batch learnability (mean ± std)", "per seed"],
        [[name, spread(values, 4), per_seed(values, 4)] for name, values in named.items()],
    )
    gibbs = params["gibbs"]
    lines += [
        "",
        f"Selection only, on {params['super_batches']} super-batches of B = {params['super_batch']} per seed "
        f"(b = {params['batch_size']}, F = {params['ratio']}, learnability of the early learner against the "
        f"reference, tau = {params['temperature']}); batch learnability = score(S) / b^2, the unit of "
        f"select's selected_score. The oracle: {gibbs['chains']} Metropolis swap chains of {gibbs['steps']} "
        f"steps, {gibbs['burn_in']} burn-in, targeting exp(score(S) / tau), the distribution JEST "
        "approximates in N chunks.",
    ]
    most = counts[-1]
    shares = [recovered_share(m["jest"][str(most)], m["gibbs_mean"], m["random"]) for m in means]
    claims = [
        Claim(
            f"N = {most} chunks recover batches as learnable as a long Gibbs run",
            "Fig. 2 middle: N = 16 chunks recover batches as learnable as a long Gibbs run",
            f"JEST N = {most}: {spread(named[f'JEST, N = {most} chunks'], 4)}; Gibbs mean "
            f"{spread(named['Gibbs oracle, post-burn-in mean'], 4)}; share of the oracle's gain over random "
            f"recovered: {per_seed(shares, 2)} (holds at ≥ {RECOVERED})",
            tuple(share >= RECOVERED for share in shares),
        )
    ]
    if figures is not None:
        chunks_figure(named, counts, figures / "chunks.png")
        lines += ["", f"![batch learnability against chunks]({figures.name}/chunks.png)"]
    return lines, claims


def chunks_figure(named: dict[str, list[float]], counts: list[int], path: Path) -> None:
    """Batch learnability against N (one line per seed, faint, and their mean), the others as levels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    jest = [named[f"JEST, N = {n} chunks"] for n in counts]
    fig, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
    for seed in range(len(jest[0])):
        ax.plot(counts, [values[seed] for values in jest], color="C0", alpha=0.3, marker="o", markersize=3)
    ax.plot(counts, [statistics.mean(v) for v in jest], color="C0", marker="o", label="JEST in N chunks")
    levels = ("random batch", "independent (softmax of own score)", "Gibbs oracle, post-burn-in mean",
              "Gibbs oracle, best state")  # fmt: skip
    for colour, name in zip(("C7", "C1", "C3", "C2"), levels, strict=True):
        ax.axhline(statistics.mean(named[name]), color=colour, linestyle="--", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(counts, [str(n) for n in counts])
    ax.set(
        xlabel="chunks N", ylabel="batch learnability (mean A_ij)", title="JEST's chunks against the oracle"
    )
    ax.legend(frameon=False, fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- big


def big_section(seeds: Sequence[Path]) -> tuple[list[str], list[Claim]]:
    """Bootstrapping: the reference against the same-size JEST learner at every budget every seed trained,
    and against the siglip-small learners once they are all done."""
    reference = learners(seeds, "runs/reference")
    folders = [budget_folders(seed) for seed in seeds]
    tiny_jest = {
        steps: runs
        for steps in common(folders)
        if (runs := learners([f[steps] for f in folders], "runs/jest")) is not None
    }
    big = {name: learners(seeds, "big/runs", name) for name in BIG_LEARNERS}
    big_done = all(v is not None for v in big.values())
    if reference is None or not tiny_jest:
        return ["(the reference or the same-size JEST learner is not done in every seed)"], []
    named = [("reference (curated set)", reference)]
    named += [("JEST, same model as the reference", runs) for runs in tiny_jest.values()]
    named += [(f"{name}, bigger learner", runs) for name, runs in big.items()] if big_done else []
    rows = []
    for label, runs in named:
        config = read_config(runs[0].folder)
        top1 = [r.final() for r in runs]
        rows.append(
            [label, config.model, config.steps, spread(top1), per_seed(top1),
             mean_e([r.total_flops() for r in runs]), mean_e([r.total_flops(True) for r in runs])]
        )  # fmt: skip
    lines = table(
        ["run", "model", "steps", f"{TOP1} (mean ± std)", "per seed", f"total FLOPs ({CHARGED})",
         f"total FLOPs ({GIVEN})"],
        rows,
    )  # fmt: skip
    if not big_done:
        lines += ["", "(the bigger learner's runs are not all done)"]
    ref_top1 = [r.final() for r in reference]
    steered = [(f"the bigger (siglip-small) JEST learner, {read_config(big['jest'][0].folder).steps} steps",
                big["jest"])] if big_done else []  # fmt: skip
    steered += [(f"the same-size JEST learner, {steps} steps", runs) for steps, runs in tiny_jest.items()]
    claims = []
    for label, runs in steered:
        top1 = [r.final() for r in runs]
        claims.append(
            Claim(
                f"data-quality bootstrapping: {label} ends above its reference",
                "a reference trained on a little curated data steers a learner that ends above the reference",
                f"learner {spread(top1)} ({per_seed(top1)}) against the reference's {spread(ref_top1)} "
                f"({per_seed(ref_top1)})",
                tuple(a > b for a, b in zip(top1, ref_top1, strict=True)),
            )
        )
    return lines, claims


# ---------------------------------------------------------------------------------------------- budgets


def budget_section(seeds: Sequence[Path]) -> tuple[list[str], list[Claim]]:
    folders = [budget_folders(seed) for seed in seeds]
    budgets = common(folders)
    longer = learners(seeds, "runs/uniform-3x")
    if len(budgets) < 2 or longer is None:
        return ["(the budget settings are not all done)"], []
    runs = {
        (method, k): [Learner(by_k[k] / "runs" / method) for by_k in folders]
        for method in BUDGET_METHODS
        for k in budgets
    }
    # uniform at 3x each budget, where a budget's folder trained it too: more of uniform's schedules
    longers = [
        [Learner(by_k[k] / "runs/uniform-3x") for by_k in folders]
        for k in budgets
        if all(done(by_k[k] / "runs/uniform-3x") for by_k in folders)
    ]
    rows = []
    for (method, k), seeds_runs in runs.items():
        rows.append(budget_row(f"{BUDGET_METHODS[method]}, {k} steps", seeds_runs))
    for runs_3x in longers:
        rows.append(budget_row(f"uniform-3x, {read_config(runs_3x[0].folder).steps} steps", runs_3x))
    lines = table(
        ["learner, schedule", f"{TOP1} (mean ± std)", "per seed", f"total FLOPs ({CHARGED})",
         f"total FLOPs ({GIVEN})"],
        rows,
    )  # fmt: skip
    lines += ["", "Each budget is a schedule of its own (cosine to that step, warmup half of it)."]
    jest = {k: runs[("jest", k)] for k in budgets}
    claims, ratio_lines = compute_claims(jest, longer, "the same-size learner (siglip-tiny)")
    big_jest, big_longer = learners(seeds, "big/runs/jest"), learners(seeds, "big/runs/uniform-3x")
    if big_jest is not None and big_longer is not None:
        steps = read_config(big_jest[0].folder).steps
        big_claims, big_lines = compute_claims(
            {steps: big_jest}, big_longer, "the bigger learner (siglip-small)"
        )
        claims += big_claims
        ratio_lines += big_lines
    uniform_best = best_uniform(runs, budgets, longers or [longer])
    ratio_lines += uniform_best
    return lines + ratio_lines, claims


def budget_row(label: str, runs: Sequence[Learner]) -> list[object]:
    top1 = [r.final() for r in runs]
    return [
        label, spread(top1), per_seed(top1), mean_e([r.total_flops() for r in runs]),
        mean_e([r.total_flops(True) for r in runs]),
    ]  # fmt: skip


def reach_ratios(
    jest: dict[int, Sequence[Learner]], target: Sequence[Learner], reference_given: bool
) -> list[tuple[tuple[str, int, float] | None, float | None]]:
    """Per seed: where JEST's curves across its budgets first reach the target's final top-1 (budget label,
    step, total FLOPs), and those FLOPs over the target's total."""
    out = []
    for seed, goal in enumerate(target):
        curves = {f"{k} steps": runs[seed].curve(reference_given) for k, runs in jest.items()}
        reach = first_reach(curves, goal.final())
        out.append((reach, None if reach is None else reach[2] / goal.total_flops()))
    return out


def compute_claims(
    jest: dict[int, Sequence[Learner]], longer: Sequence[Learner], who: str
) -> tuple[list[Claim], list[str]]:
    lines = [
        "",
        f"JEST reaching uniform-3x's final top-1, {who}: total FLOPs by then / uniform-3x's total FLOPs",
    ]
    claims = []
    for given, name in ((True, GIVEN), (False, CHARGED)):
        found = reach_ratios(jest, longer, given)
        ratios = [ratio for _, ratio in found]
        where = "; ".join(
            f"seed {s}: " + ("not reached" if r is None else f"{r[0]}, step {r[1]}")
            for s, (r, _) in enumerate(found)
        )
        lines.append(f"- {name}: {ratio_text(ratios)} ({where})")
        claims.append(
            Claim(
                f"{who}: JEST reaches uniform-3x's final top-1 with ≤ 1/3 of its total FLOPs ({name})",
                "JEST matches the state of the art with up to 10× less computation (abstract); the target "
                "here: ≤ 1/3 of uniform-3x's total FLOPs",
                "total FLOPs for JEST to reach uniform-3x's final / uniform-3x's total: "
                + ratio_text(ratios),
                tuple(r is not None and r <= COMPUTE_TARGET for r in ratios),
            )
        )
    return claims, lines


def best_uniform(
    runs: dict[tuple[str, int], Sequence[Learner]],
    budgets: Sequence[int],
    longers: Sequence[Sequence[Learner]],
) -> list[str]:
    """Where JEST's curves first reach uniform's best final top-1 over its schedules (every budget and
    every uniform-3x), over the total FLOPs of that uniform run."""
    jest = {k: runs[("jest", k)] for k in budgets}
    bests = [
        max(
            [*(runs[("uniform", k)][seed] for k in budgets), *(runs_3x[seed] for runs_3x in longers)],
            key=lambda run: run.final(),
        )
        for seed in range(len(longers[0]))
    ]
    found = {given: reach_ratios(jest, bests, given) for given in (True, False)}
    lines = ["", "JEST reaching uniform's best final top-1 over its schedules (the same-size learner):"]
    for seed, best in enumerate(bests):
        parts = []
        for given, name in ((True, GIVEN), (False, CHARGED)):
            reach, ratio = found[given][seed]
            parts.append(
                "not reached" if reach is None else f"{ratio:.2f}× ({reach[0]}, step {reach[1]}) {name}"
            )
        steps = read_config(best.folder).steps
        lines.append(
            f"- seed {seed}: uniform's best {best.final():.3f} ({steps} steps); JEST: {'; '.join(parts)}"
        )
    return lines


# ---------------------------------------------------------------------------------------------- page


def claims_table(claims: Sequence[Claim]) -> list[str]:
    return table(
        ["claim", "the paper", "curate measured", "verdict"],
        [[c.name, c.paper, c.measured, f"**{c.verdict}**"] for c in claims],
    )


def page(seeds: Sequence[Path], figures: Path | None) -> str:
    sections = [
        ("Scaling with the filter ratio F", ratio_section(seeds)),
        ("Chunks against the Gibbs oracle", chunks_section(seeds, figures)),
        ("A learner larger than its reference", big_section(seeds)),
        ("Budgets and total FLOPs in two accountings", budget_section(seeds)),
    ]
    claims = [claim for _, (_, found) in sections for claim in found]
    lines = [
        "# The paper's further claims, measured",
        "",
        f"{len(seeds)} seed{'s' * (len(seeds) != 1)} ({', '.join(seed.name for seed in seeds)}); mean ± std "
        "over the seeds, then per "
        f"seed. Total FLOPs in two accountings: {CHARGED} (everything upstream) and {GIVEN} (its scoring "
        "charged, its training not).",
        "",
        "## Claims",
        "",
        *claims_table(claims),
    ]
    for title, (body, _) in sections:
        lines += ["", f"## {title}", "", *body]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("seeds", nargs="+", type=Path, help="the seed folders examples/paper.mk writes")
    parser.add_argument("--figures", type=Path, help="write chunks.png here")
    args = parser.parse_args(argv)
    print(page(args.seeds, args.figures), end="")


if __name__ == "__main__":
    main()
