"""The report's sections, one function each: runs, selection, noise and the contact sheet.

Each takes what load.py read and returns a `page.Section` of figures (drawn by plots.py), tables and
notes. The captions are here, in one table, so the page's wording can be read and changed in one place.
Batch scores and online JEST's learnability are both the mean of A_ij over the b x b pairs of a batch
(`curate.jest.choose`), so the two are in the same units wherever the page shows them.
"""

from __future__ import annotations

import pandas as pd

from curate.cost import amortised
from curate.errors import CurateError
from curate.fileio import basename
from curate.report import plots
from curate.report.load import Manifest, Run, super_batch_scores
from curate.report.page import Figure, Section, Table, format_number
from curate.shards.schema import OK

FINAL_METRICS = ("zeroshot_top1", "zeroshot_top5", "image_to_text_r1", "text_to_image_r1")

CAPTIONS = {
    "eval_vs_step": "Zero-shot accuracy and retrieval recall on the eval set against the training step.",
    "eval_vs_total_flops": (
        "The same against total FLOPs, everything counted: the run's own training (forward + backward, and "
        "online JEST's scoring forwards) plus everything it inherited: the reference's training and its "
        "scoring of the crawl, an early learner's training and scoring for offline learnability."
    ),
    "eval_vs_total_seconds": (
        "The same against total wall seconds on the machines that ran them, everything counted (as for "
        "FLOPs); evaluation is left out."
    ),
    "eval_vs_shared_flops": (
        "The same against total FLOPs with what several runs inherit shared out equally among them, as when "
        "one reference serves several learners: {sharing}."
    ),
    "accountings": (
        "Zero-shot top-1 against total FLOPs in two accountings. Left, the reference's training charged: "
        "everything upstream counted, as when the reference is trained for these learners. Right, the "
        "reference given, as when one already has it: its scoring of the crawl charged, its training not "
        "(an early learner's training, made for offline learnability, stays charged)."
    ),
    "top1_vs_ratio": (
        "Final zero-shot top-1 against the filter ratio F of each run's selection (it kept 1 - F of each "
        "super-batch; read from its manifest's summary.json), a line per selection method and criterion: "
        "the mean over its runs at each F, their standard deviation as error bars. Dashed: the learners on "
        "all the data, by their steps."
    ),
    "inherited": "What each run inherited, each counted once (curate.cost follows the recorded inputs).",
    "training": (
        "Training loss per log window; for online JEST runs, the learnability of the selected batch next to "
        "a random batch of the same size from the same super-batch: the mean of A_ij over the batch's "
        "b x b pairs, as in a selection's batch score."
    ),
    "selection_similarity": (
        "{name}: the reference similarity of the samples it selected and of the scored samples it did not. "
        "(The manifest's own score is the conditional score at draw time, known only for selected samples, "
        "so the reference similarity stands in for both.)"
    ),
    "selection_score": (
        "{name}: the conditional score of each selected sample when it was drawn (give --scores to compare "
        "selected with rejected samples)."
    ),
    "selection_super_batches": (
        "{name}: per super-batch, the mean criterion score A_ij over the b x b pairs of the selected batch "
        "and of a random batch of the same size (from summary.json)."
    ),
    "scores_similarity": "Reference similarity of every sample scored ok.",
    "similarity_by_noise": "Reference similarity by the kind of noise the synthetic crawl put in each pair.",
    "noise_shares": (
        "Share of each noise kind (from the shards' noise column; none = clean) in the pool, in what each "
        "manifest selected and rejected, and in what each run trained on (its batches.parquet joined with "
        "its own shards: every trained sample counts, repeats included)."
    ),
    "samples": "The {count} samples with the {name} {what}: key · score{noise}, then the caption.",
}


# ---------------------------------------------------------------------------------------------- runs


def runs_section(runs: list[Run]) -> Section:
    section = Section("Training runs", "runs")
    shared = _shared(runs)
    _add_total_cost(runs, shared)
    metrics = [m for m in FINAL_METRICS if any(m in r.evals for r in runs)]
    rows = []
    for run in runs:
        last_log = run.logs.iloc[-1] if len(run.logs) else {}
        last_eval = run.evals.iloc[-1] if len(run.evals) else {}
        own, total = run.lineage.own.cost, run.lineage.total
        upstream_flops = total.flops - own.flops
        rows.append(
            [run.name, _data_kind(run), _int(_get(last_log, "step")), _get(last_log, "loss"), own.flops]
            + [
                _bounded(value, run)
                for value in (upstream_flops, total.flops, run.lineage.without_reference_training.flops)
            ]
            + [_bounded(total.seconds, run), _bounded(shared[run.name].flops, run)]
            + [_get(last_eval, m) for m in metrics]
        )
    headers = ["run", "data", "steps", "final loss", "own FLOPs", "inherited FLOPs", "total FLOPs"]
    headers += ["total FLOPs, reference given", "total seconds", "total FLOPs, upstream shared"]
    caption = "final numbers (last log, last eval)"
    if any(run.lineage.gaps for run in runs):
        caption += "; ≥: a lower bound, part of the run's upstream cost could not be followed (see the notes)"
    section.tables.append(Table(headers + [plots.EVAL_METRICS[m] for m in metrics], rows, caption))
    inherited = [
        [run.name, part.label, part.cost.flops, part.cost.seconds]
        for run in runs
        for part in run.lineage.upstream
    ]
    if inherited:
        section.tables.append(
            Table(["run", "inherited", "FLOPs", "seconds"], inherited, CAPTIONS["inherited"])
        )
    for run in runs:
        for gap in run.lineage.gaps:
            section.notes.append(f"{run.name}: cost not complete (a lower bound): {gap}")
    if not any(len(r.evals) for r in runs):
        section.notes.append("no eval records in these runs (train with --eval EVALSET to get them)")
    else:
        section.figures.append(
            Figure("eval_vs_step.png", plots.eval_curves(runs, "step"), CAPTIONS["eval_vs_step"])
        )
        for x in ("total_flops", "total_seconds", "shared_flops"):
            if any(x in r.evals for r in runs):
                caption = CAPTIONS[f"eval_vs_{x}"].format(sharing=_sharing_text(runs))
                section.figures.append(Figure(f"eval_vs_{x}.png", plots.eval_curves(runs, x), caption))
        _add_accountings(section, runs)
        _add_ratio_view(section, runs)
    if any("loss" in r.logs for r in runs):
        section.figures.append(Figure("training.png", plots.training_curves(runs), CAPTIONS["training"]))
    return section


def gives_reference(runs: list[Run]) -> bool:
    """Whether some run reads a reference's scores, so that its two accountings of FLOPs differ."""
    return any(run.lineage.references for run in runs)


def _add_accountings(section: Section, runs: list[Run]) -> None:
    """Top-1 against total FLOPs in both accountings, where some run has a reference to give."""
    drawn = any(x in r.evals and "zeroshot_top1" in r.evals for r in runs for x in plots.ACCOUNTINGS)
    if drawn and gives_reference(runs):
        figure = plots.accountings(runs)
        section.figures.append(Figure("top1_vs_flops_accountings.png", figure, CAPTIONS["accountings"]))


def _add_ratio_view(section: Section, runs: list[Run]) -> None:
    """Top-1 against F per selection, where the runs' selections kept different shares."""
    points = ratio_points(runs)
    if points is None:
        return
    levels = all_data_levels(runs)
    figure = plots.ratio_curves(points, levels)
    section.figures.append(Figure("top1_vs_ratio.png", figure, CAPTIONS["top1_vs_ratio"]))
    rows = [[r.selection, r.ratio, r.runs, r.mean, r.std] for r in points.itertuples()]
    rows += [[label, None, None, value, None] for label, value in levels.items()]
    headers = ["selection", "F", "runs", "zero-shot top-1 (mean)", "std over runs"]
    section.tables.append(Table(headers, rows, "final zero-shot top-1 by filter ratio"))


def ratio_points(runs: list[Run]) -> pd.DataFrame | None:
    """selection, ratio, mean and std of the final top-1, runs: per selection label and F, over the learners
    that trained on a selection; None unless their ratios differ."""
    rows = [
        (run.selection.label, run.selection.ratio, top1)
        for run in learners(runs)
        if run.selection is not None and (top1 := _final(run, "zeroshot_top1")) is not None
    ]
    if len({ratio for _, ratio, _ in rows}) < 2:
        return None
    frame = pd.DataFrame(rows, columns=["selection", "ratio", "top1"])
    grouped = frame.groupby(["selection", "ratio"], sort=False)["top1"]
    points = grouped.agg(mean="mean", std="std", runs="size").reset_index()
    points["std"] = points["std"].fillna(0.0)  # one run: no spread to draw
    return points


def all_data_levels(runs: list[Run]) -> dict[str, float]:
    """The mean final top-1 of the learners that trained on all the data, by their steps."""
    by_steps: dict[int, list[float]] = {}
    for run in learners(runs):
        top1 = _final(run, "zeroshot_top1")
        if run.config is None or run.config.online or run.config.data.manifest or top1 is None:
            continue
        by_steps.setdefault(run.config.steps, []).append(top1)
    return {
        f"all data, {steps} steps ({len(values)} run{'s' * (len(values) != 1)})": sum(values) / len(values)
        for steps, values in sorted(by_steps.items())
    }


def learners(runs: list[Run], keep: Run | None = None) -> list[Run]:
    """The runs no other given run inherits from (a reference is not a learner), and `keep`."""
    inherited = {part.path for run in runs for part in run.lineage.upstream if part.kind == "training"}
    return [r for r in runs if r is keep or r.lineage.own.path not in inherited]


def headline(runs: list[Run], baseline: str | None = None) -> list[str]:
    """One line per learner: its final top-1 and its total compute relative to the baseline's (`baseline`,
    else a run named uniform, else the first). A run that another given run inherits from (a reference)
    is not a learner, unless it is the baseline."""
    if not runs:
        return []
    names = [run.name for run in runs]
    base_name = baseline or ("uniform" if "uniform" in names else names[0])
    base = next((run for run in runs if run.name == base_name), None)
    if base is None:
        raise CurateError(f"--baseline {base_name}: no run of that name (runs: {', '.join(names)})")
    chosen = learners(runs, keep=base)
    base_cost, base_top1 = base.lineage.total, _final(base, "zeroshot_top1")
    width = max(len(run.name) for run in chosen)
    lines = []
    for run in chosen:
        cost, top1 = run.lineage.total, _final(run, "zeroshot_top1")
        accuracy = "top-1 —    " if top1 is None else f"top-1 {top1:.3f}"
        if top1 is not None and base_top1 is not None and run is not base:
            accuracy += f" ({top1 - base_top1:+.3f})"
        elif run is base:
            accuracy += "         "
        ratio = _ratio(cost.flops, base_cost.flops), _ratio(cost.seconds, base_cost.seconds)
        at_least = "≥ " if run.lineage.gaps else ""
        lines.append(
            f"{run.name:<{width}}  {accuracy}  total compute {ratio[0]} {base_name}'s FLOPs "
            f"({at_least}{cost.flops:.2e}), {ratio[1]} its seconds ({at_least}{cost.seconds:.0f} s)"
            + _lower_bound_note(run.lineage.gaps)
        )
    return lines


def _bounded(total: float, run: Run) -> float | str:
    """A total as the table shows it: marked `≥` when the run's lineage has gaps, as a lower bound."""
    return f"≥ {format_number(total)}" if run.lineage.gaps else total


def _lower_bound_note(gaps: tuple[str, ...]) -> str:
    """What the headline says of a total with gaps: that it is a lower bound, and why (the first gap; the
    report's notes list them all)."""
    if not gaps:
        return ""
    more = f"; {len(gaps) - 1} more in the notes" if len(gaps) > 1 else ""
    return f" (a lower bound: {gaps[0]}{more})"


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}×" if base > 0 else "—"


def _final(run: Run, metric: str) -> float | None:
    return _get(run.evals.iloc[-1], metric) if len(run.evals) and metric in run.evals else None


def _shared(runs: list[Run]) -> dict:
    return amortised({run.name: run.lineage for run in runs})


def _add_total_cost(runs: list[Run], shared: dict) -> None:
    """Eval-step columns with everything counted: total_flops, total_seconds (own + inherited) and
    shared_flops (own + each inherited part divided among the runs given that inherit it); given_flops,
    total FLOPs with the reference given (its training not charged)."""
    for run in runs:
        if not len(run.evals) or "flops" not in run.evals:
            continue
        inherited = run.lineage.inherited
        run.evals["total_flops"] = run.evals["flops"] + inherited.flops
        run.evals["given_flops"] = run.evals["flops"] + run.lineage.inherited_reference_given.flops
        run.evals["total_seconds"] = run.evals["seconds"] + inherited.seconds
        run.evals["shared_flops"] = run.evals["flops"] + shared[run.name].flops - run.lineage.own.cost.flops


def _sharing_text(runs: list[Run]) -> str:
    counts: dict[str, int] = {}
    for run in runs:
        for part in run.lineage.upstream:
            counts[part.label] = counts.get(part.label, 0) + 1
    return (
        "; ".join(f"{label} over {n} run{'s' * (n != 1)}" for label, n in counts.items()) or "nothing shared"
    )


def _data_kind(run: Run) -> str:
    config = run.config
    if config is None:
        return "unknown (no config.json)"
    if config.online:
        return f"online JEST, ratio {config.online.ratio}, {config.online.criterion}"
    if config.data.manifest:
        return f"offline selection ({basename(config.data.manifest)})"
    return "all data"


def _get(row, name: str) -> float | None:
    value = row.get(name) if hasattr(row, "get") else None
    return None if value is None or pd.isna(value) else float(value)


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


# ---------------------------------------------------------------------------------------------- selection


def selection_section(
    manifests: list[Manifest], scores: pd.DataFrame | None, reference: str | None, noise: pd.Series | None
) -> Section:
    """`reference` names the model that scored `scores`."""
    section = Section("Selections" if manifests else "Scores", "selection")
    ok = scores[scores["status"] == OK] if scores is not None else None
    if ok is not None:
        section.text = (
            f"{len(scores)} samples scored by {reference}, {len(ok)} of them ok; similarity is the cosine of "
            "the reference's image and text embeddings."
        )
    rows = []
    for index, manifest in enumerate(manifests, 1):
        params = manifest.summary.get("parameters") or {}
        counts = manifest.summary.get("counts") or {}
        rows.append(
            [
                manifest.name,
                params.get("method"),
                params.get("criterion"),
                params.get("ratio"),
                len(manifest.rows),
                manifest.rows["key"].nunique(),  # fewer than the rows when passes repeat keys
                counts.get("eligible"),
                manifest.summary.get("selected_score"),
                manifest.summary.get("random_score"),
            ]
        )
        if ok is not None:
            chosen = ok["key"].isin(set(manifest.rows["key"]))
            groups = {
                "selected": ok.loc[chosen, "similarity"].to_numpy(),
                "rejected": ok.loc[~chosen, "similarity"].to_numpy(),
            }
            section.figures.append(
                Figure(
                    f"selection_{index}_similarity.png",
                    plots.histograms(
                        groups, "reference similarity", f"{manifest.name}: selected vs rejected"
                    ),
                    CAPTIONS["selection_similarity"].format(name=manifest.name),
                )
            )
        else:
            section.figures.append(
                Figure(
                    f"selection_{index}_score.png",
                    plots.histograms(
                        {"selected": manifest.rows["score"].to_numpy()},
                        "score at draw time",
                        f"{manifest.name}: selected samples",
                    ),
                    CAPTIONS["selection_score"].format(name=manifest.name),
                )
            )
        per_batch = super_batch_scores(manifest.summary)
        if per_batch is not None:
            section.figures.append(
                Figure(
                    f"selection_{index}_super_batches.png",
                    plots.super_batches(per_batch),
                    CAPTIONS["selection_super_batches"].format(name=manifest.name),
                )
            )
    if rows:
        headers = ["manifest", "method", "criterion", "ratio", "selected", "distinct keys", "eligible"]
        headers += ["selected batch score", "random batch score"]
        caption = "from manifest.parquet and summary.json; batch scores are mean A_ij over the b x b pairs"
        section.tables.insert(0, Table(headers, rows, caption))
    if ok is not None and not manifests:
        section.figures.append(
            Figure(
                "scores_similarity.png",
                plots.histograms({"ok": ok["similarity"].to_numpy()}, "reference similarity", "all scored"),
                CAPTIONS["scores_similarity"],
            )
        )
    if ok is not None and noise is not None:
        kinds = noise.reindex(ok["key"]).fillna("unknown").to_numpy()
        by_kind = {k: ok["similarity"].to_numpy()[kinds == k] for k in sorted(set(kinds))}
        section.figures.append(
            Figure(
                "similarity_by_noise.png",
                plots.by_noise(by_kind, "reference similarity"),
                CAPTIONS["similarity_by_noise"],
            )
        )
    if scores is not None and len(ok) < len(scores):
        failed = scores.loc[scores["status"] != OK, "status"].value_counts().sort_index()
        section.tables.append(
            Table(
                ["status", "samples"],
                [[k, int(v)] for k, v in failed.items()],
                "samples that could not be scored",
            )
        )
    return section


# ---------------------------------------------------------------------------------------------- noise


def noise_section(
    manifests: list[Manifest],
    scores: pd.DataFrame | None,
    noise: pd.Series | None,
    runs: list[Run],
    run_noise: dict[str, pd.Series],
) -> Section | None:
    """`noise` labels the pool's keys; `run_noise[name]` labels the keys of the shards that run trained on
    (runs may train on different shards whose keys coincide: the reference's curated set and the crawl)."""
    selections: dict[str, dict[str, float]] = {}
    if noise is not None:
        pool = list(scores["key"]) if scores is not None else list(noise.index)
        selections["pool" + (" (scored)" if scores is not None else " (shards)")] = shares(noise, pool)
        for manifest in manifests:
            chosen = set(manifest.rows["key"])
            selections[f"{manifest.name}: selected"] = shares(noise, list(manifest.rows["key"]))
            selections[f"{manifest.name}: rejected"] = shares(noise, [k for k in pool if k not in chosen])
    for run in runs:
        if run.trained_keys and run.name in run_noise:
            selections[f"{run.name}: trained on"] = shares(run_noise[run.name], run.trained_keys)
    if not selections:
        return None
    section = Section("Noise in each selection", "noise")
    section.figures.append(
        Figure("noise_shares.png", plots.noise_shares(selections), CAPTIONS["noise_shares"])
    )
    kinds = plots.noise_order({k for values in selections.values() for k in values})
    rows = [[name, *(values.get(k, 0.0) for k in kinds)] for name, values in selections.items()]
    section.tables.append(Table(["selection", *kinds], rows, "shares of each noise kind"))
    return section


def shares(noise: pd.Series, keys: list[str]) -> dict[str, float]:
    """The share of each noise kind among `keys` (a key counts as often as it occurs)."""
    counts = noise.reindex(keys).fillna("unknown").value_counts()
    total = counts.sum()
    return {k: float(v / total) for k, v in sorted(counts.items())} if total else {}


# ---------------------------------------------------------------------------------------------- contact sheet


def contact_section(
    manifests: list[Manifest],
    scores: pd.DataFrame | None,
    shard_columns: pd.DataFrame | None,
    images: dict[str, bytes],
    top: int,
) -> Section:
    """The `top` highest- and lowest-ranked samples; `shard_columns` (key-indexed caption and noise, when
    the shards are known) fills in what the ranking lacks, `images` holds the pictures."""
    halves = extremes(manifests, scores, top)
    what = _ranked_by(manifests, scores)
    noise = shard_columns["noise"] if shard_columns is not None and "noise" in shard_columns else None
    captions = shard_columns["caption"] if shard_columns is not None and "caption" in shard_columns else None
    section = Section("Highest- and lowest-scored samples", "samples", figures_first=True)
    section.text = f"Ranked by {what}."
    if shard_columns is None:
        section.notes.append("no --shards given: captions only, no images")
    for name, half in halves.items():
        rows = []
        samples = []
        for row in half.itertuples():
            caption = row.caption if isinstance(row.caption, str) else _lookup(captions, row.key) or ""
            kind = _lookup(noise, row.key)
            samples.append(
                (
                    images.get(row.key),
                    f"{row.key} · {row.value:.3f}" + (f" · {kind}" if kind else ""),
                    caption,
                )
            )
            rows.append([row.key, float(row.value)] + ([kind] if noise is not None else []) + [caption])
        if images:
            section.figures.append(
                Figure(
                    f"samples_{name}.png",
                    plots.contact_sheet(samples, f"{name} {what}"),
                    CAPTIONS["samples"].format(
                        count=len(half),
                        name=name,
                        what=what,
                        noise=" · noise kind" if noise is not None else "",
                    ),
                )
            )
        headers = ["key", what.split(" (")[0]] + (["noise"] if noise is not None else []) + ["caption"]
        section.tables.append(Table(headers, rows, f"{name} {len(half)}"))
    return section


def extremes(manifests: list[Manifest], scores: pd.DataFrame | None, top: int) -> dict[str, pd.DataFrame]:
    """The highest and lowest `top` rows (key, shard, caption, value): by reference similarity when scores
    are given, else by the first manifest's score at draw time. Ties go by key, so runs agree."""
    if scores is not None:
        ranked = scores[scores["status"] == OK][["key", "shard", "caption", "similarity"]]
        ranked = ranked.rename(columns={"similarity": "value"})
    else:
        ranked = manifests[0].rows[["key", "shard", "score"]].rename(columns={"score": "value"})
        ranked["caption"] = None
    ranked = ranked.sort_values(
        ["value", "key"], ascending=[False, True], kind="mergesort", ignore_index=True
    )
    return {"highest": ranked.head(top), "lowest": ranked.tail(top).iloc[::-1]}


def _ranked_by(manifests: list[Manifest], scores: pd.DataFrame | None) -> str:
    if scores is not None:
        return "reference similarity"
    return f"score at draw time in {manifests[0].name} (selected samples only)"


def _lookup(column: pd.Series | None, key: str) -> str | None:
    if column is None or key not in column.index:
        return None
    value = column.loc[key]
    return value if isinstance(value, str) else None
