"""`curate report`: runs, scores and manifests → PNG figures and one static `index.html` in a folder.

Sections appear only for what was given: runs (eval curves against step and FLOPs, training curves, a table
of final numbers), selections (reference similarity of selected vs rejected samples, batch score per
super-batch), noise (the share of each kind in the pool and in each selection), and a contact sheet of the
highest- and lowest-scored samples. Shards supply the images and, for synthetic data, the noise kinds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from curate.errors import CurateError
from curate.fileio import write_bytes_atomic
from curate.report import plots
from curate.report.load import (
    Manifest,
    Run,
    detect_kind,
    read_images,
    read_manifest_folder,
    read_noise,
    read_run,
    read_scores,
    score_model,
    super_batch_scores,
)
from curate.report.page import Figure, Section, Table, render
from curate.shards.schema import OK

INDEX_FILE = "index.html"
Progress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class ReportConfig:
    runs: tuple[str, ...] = ()
    scores: str | None = None
    manifests: tuple[str, ...] = ()
    shards: str | None = None
    scoring_flops: tuple[tuple[str, float], ...] = ()  # (run name, FLOPs spent scoring its pool offline)
    top: int = 12  # samples in each half of the contact sheet
    title: str = "curate report"

    def __post_init__(self) -> None:
        if not (self.runs or self.scores or self.manifests):
            raise CurateError("nothing to report: give run folders, --scores DIR or --manifest DIR")
        if self.top < 0:
            raise CurateError(f"--top must be 0 or more, got {self.top}")
        for name, flops in self.scoring_flops:
            if not flops >= 0:
                raise CurateError(f"--scoring-flops {name}={flops}: FLOPs must be 0 or more")

    @classmethod
    def from_inputs(cls, inputs: Sequence[str], **options) -> ReportConfig:
        """Sort positional folders by what they hold (run, manifest or scores) into the options."""
        runs, manifests = list(options.pop("runs", ())), list(options.pop("manifests", ()))
        scores = options.pop("scores", None)
        for path in inputs:
            kind = detect_kind(path)
            if kind == "run":
                runs.append(str(path))
            elif kind == "manifest":
                manifests.append(str(path))
            elif scores is not None and str(scores) != str(path):
                raise CurateError(f"only one score folder per report: {scores} and {path}")
            else:
                scores = str(path)
        return cls(runs=tuple(runs), manifests=tuple(manifests), scores=scores, **options)


@dataclass
class ReportSummary:
    index: str
    figures: list[str] = field(default_factory=list)
    runs: int = 0
    manifests: int = 0
    scored: int | None = None  # samples in the score folder
    notes: list[str] = field(default_factory=list)


def report(config: ReportConfig, out: str, progress: Progress | None = None) -> ReportSummary:
    """Write `out/index.html` and its PNGs; return what was written."""
    runs = [read_run(p) for p in config.runs]
    _relabel(runs, config.runs)
    manifests = [read_manifest_folder(p) for p in config.manifests]
    _relabel(manifests, config.manifests)
    scores_dir = config.scores or next((m.recorded_input("scores") for m in manifests), None)
    shards_dir = config.shards or next((m.recorded_input("shards") for m in manifests), None)
    if config.shards and not Path(config.shards).is_dir():
        raise CurateError(f"--shards {config.shards}: no such folder")
    scores = read_scores(scores_dir) if scores_dir else None
    noise = read_noise(shards_dir) if shards_dir else None
    offsets = _scoring_offsets(config.scoring_flops, runs)

    inputs = [("run", p) for p in config.runs] + [("manifest", p) for p in config.manifests]
    inputs += [("scores", scores_dir)] if scores_dir else []
    inputs += [("shards", shards_dir)] if shards_dir else []
    sections = []
    if runs:
        sections.append(_runs_section(runs, offsets))
    if manifests or scores is not None:
        sections.append(_selection_section(manifests, scores, scores_dir, noise))
    noise_section = _noise_section(manifests, scores, noise, runs)
    if noise_section:
        sections.append(noise_section)
    if config.top and (scores is not None or manifests):
        sections.append(_contact_section(manifests, scores, noise, shards_dir, config.top))

    Path(out).mkdir(parents=True, exist_ok=True)
    figures = [f for s in sections for f in s.figures]
    for done, figure in enumerate(figures, 1):
        write_bytes_atomic(str(Path(out) / figure.file), figure.png)
        if progress:
            progress(done, len(figures))
    index = str(Path(out) / INDEX_FILE)
    write_bytes_atomic(index, render(config.title, inputs, sections).encode())
    return ReportSummary(
        index=index,
        figures=[f.file for f in figures],
        runs=len(runs),
        manifests=len(manifests),
        scored=None if scores is None else len(scores),
        notes=[n for s in sections for n in s.notes],
    )


def _relabel(items: list[Run] | list[Manifest], paths: Sequence[str]) -> None:
    """Label by folder name; where two share a name, prefix their parent folder too."""
    names = [item.name for item in items]
    for item, path in zip(items, paths, strict=True):
        if names.count(item.name) > 1:
            item.name = "/".join(Path(path).resolve().parts[-2:])
    if len({item.name for item in items}) < len(items):
        raise CurateError(f"two inputs have the same label: {', '.join(names)}")


def _scoring_offsets(given: Sequence[tuple[str, float]], runs: list[Run]) -> dict[str, float]:
    names = {run.name for run in runs}
    for name, _ in given:
        if name not in names:
            raise CurateError(
                f"--scoring-flops {name}=...: no run named {name} (runs: {', '.join(sorted(names))})"
            )
    return dict(given)


# ---------------------------------------------------------------------------------------------- runs

FINAL_METRICS = ("zeroshot_top1", "zeroshot_top5", "image_to_text_r1", "text_to_image_r1")


def _runs_section(runs: list[Run], offsets: dict[str, float]) -> Section:
    section = Section("Training runs", "runs")
    metrics = [m for m in FINAL_METRICS if any(m in r.evals for r in runs)]
    rows = []
    for run in runs:
        last_log = run.logs.iloc[-1] if len(run.logs) else {}
        last_eval = run.evals.iloc[-1] if len(run.evals) else {}
        flops = _get(last_log, "flops")
        total = flops + offsets[run.name] if flops is not None and run.name in offsets else flops
        rows.append(
            [run.name, _data_kind(run), _int(_get(last_log, "step")), _get(last_log, "loss"), flops, total]
            + [_get(last_eval, m) for m in metrics]
        )
    headers = ["run", "data", "steps", "final loss", "training FLOPs", "FLOPs incl. offline scoring"]
    section.tables.append(
        Table(headers + [plots.EVAL_METRICS[m] for m in metrics], rows, "final numbers (last log, last eval)")
    )
    if not any(len(r.evals) for r in runs):
        section.notes.append("no eval records in these runs (train with --eval EVALSET to get them)")
    else:
        section.figures.append(
            Figure(
                "eval_vs_step.png",
                plots.eval_curves(runs, "step"),
                "Zero-shot accuracy and retrieval recall on the eval set against the training step.",
            )
        )
        if any("flops" in r.evals for r in runs):
            counted = ", ".join(sorted(offsets)) or "none"
            section.figures.append(
                Figure(
                    "eval_vs_flops.png",
                    plots.eval_curves(runs, "flops", offsets),
                    "The same against total FLOPs: training FLOPs (forward + backward, and the learner's "
                    "scoring forwards for online JEST) plus, where given with --scoring-flops, the reference "
                    f"model's offline scoring of the pool (counted for: {counted}).",
                )
            )
    uncounted = [r.name for r in runs if r.trained_on_manifest and r.name not in offsets]
    if uncounted:
        section.notes.append(
            f"trained on an offline selection without its scoring cost counted: {', '.join(uncounted)} "
            "(pass --scoring-flops NAME=FLOPS to add it)"
        )
    if any("loss" in r.logs for r in runs):
        section.figures.append(
            Figure(
                "training.png",
                plots.training_curves(runs),
                "Training loss per log window; for online JEST runs, the mean learnability of the "
                "selected batch next to a random batch of the same size from the same super-batch.",
            )
        )
    return section


def _data_kind(run: Run) -> str:
    if run.config.get("online_jest"):
        return f"online JEST, ratio {run.config.get('ratio')}, {run.config.get('criterion', '')}".rstrip(", ")
    if run.trained_on_manifest:
        return f"offline selection ({Path(str(run.config['manifest'])).name})"
    return "all data" if run.config else "unknown (no config.json)"


def _get(row, name: str) -> float | None:
    value = row.get(name) if hasattr(row, "get") else None
    return None if value is None or pd.isna(value) else float(value)


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


# ---------------------------------------------------------------------------------------------- selection


def _selection_section(
    manifests: list[Manifest], scores: pd.DataFrame | None, scores_dir: str | None, noise: pd.Series | None
) -> Section:
    section = Section("Selections" if manifests else "Scores", "selection")
    ok = scores[scores["status"] == OK] if scores is not None else None
    if ok is not None:
        reference = score_model(scores_dir)
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
                    f"{manifest.name}: the reference similarity of the samples it selected and of the scored "
                    "samples it did not. (The manifest's own score is the conditional score at draw time, "
                    "known only for selected samples, so the reference similarity stands in for both.)",
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
                    f"{manifest.name}: the conditional score of each selected sample when it was drawn (give "
                    "--scores to compare selected with rejected samples).",
                )
            )
        per_batch = super_batch_scores(manifest.summary)
        if per_batch is not None:
            section.figures.append(
                Figure(
                    f"selection_{index}_super_batches.png",
                    plots.super_batches(per_batch),
                    f"{manifest.name}: per super-batch, the mean criterion score A_ij over the pairs of the "
                    "selected batch and of a random batch of the same size (from summary.json).",
                )
            )
    if rows:
        section.tables.insert(
            0,
            Table(
                [
                    "manifest",
                    "method",
                    "criterion",
                    "ratio",
                    "selected",
                    "eligible",
                    "selected score",
                    "random score",
                ],
                rows,
                "from manifest.parquet and summary.json",
            ),
        )
    if ok is not None and not manifests:
        section.figures.append(
            Figure(
                "scores_similarity.png",
                plots.histograms({"ok": ok["similarity"].to_numpy()}, "reference similarity", "all scored"),
                "Reference similarity of every sample scored ok.",
            )
        )
    if ok is not None and noise is not None:
        kinds = noise.reindex(ok["key"]).fillna("unknown").to_numpy()
        by_kind = {k: ok["similarity"].to_numpy()[kinds == k] for k in sorted(set(kinds))}
        section.figures.append(
            Figure(
                "similarity_by_noise.png",
                plots.by_noise(by_kind, "reference similarity"),
                "Reference similarity by the kind of noise the synthetic crawl put in each pair.",
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


def _noise_section(
    manifests: list[Manifest], scores: pd.DataFrame | None, noise: pd.Series | None, runs: list[Run]
) -> Section | None:
    selections: dict[str, dict[str, float]] = {}
    if noise is not None:
        pool = list(scores["key"]) if scores is not None else list(noise.index)
        selections["pool" + (" (scored)" if scores is not None else " (shards)")] = _shares(noise, pool)
        for manifest in manifests:
            chosen = set(manifest.rows["key"])
            selections[f"{manifest.name}: selected"] = _shares(noise, list(manifest.rows["key"]))
            selections[f"{manifest.name}: rejected"] = _shares(noise, [k for k in pool if k not in chosen])
    for run in runs:
        if run.noise_selected:
            selections[f"{run.name}: online JEST selected"] = run.noise_selected
    if not selections:
        return None
    section = Section("Noise in each selection", "noise")
    section.figures.append(
        Figure(
            "noise_shares.png",
            plots.noise_shares(selections),
            "Share of each noise kind (from the shards' noise column; none = clean) in the pool, in what "
            "each manifest selected and rejected, and, for online JEST runs, in the batches they selected "
            "(mean over log windows).",
        )
    )
    kinds = plots.noise_order({k for shares in selections.values() for k in shares})
    rows = [[name, *(shares.get(k, 0.0) for k in kinds)] for name, shares in selections.items()]
    section.tables.append(Table(["selection", *kinds], rows, "shares of each noise kind"))
    return section


def _shares(noise: pd.Series, keys: list[str]) -> dict[str, float]:
    counts = noise.reindex(keys).fillna("unknown").value_counts()
    total = counts.sum()
    return {k: float(v / total) for k, v in sorted(counts.items())} if total else {}


# ---------------------------------------------------------------------------------------------- contact sheet


def _contact_section(
    manifests: list[Manifest],
    scores: pd.DataFrame | None,
    noise: pd.Series | None,
    shards: str | None,
    top: int,
) -> Section:
    if scores is not None:
        ranked = scores[scores["status"] == OK][["key", "shard", "caption", "similarity"]]
        ranked = ranked.rename(columns={"similarity": "value"})
        what = "reference similarity"
    else:
        manifest = manifests[0]
        ranked = manifest.rows[["key", "shard", "score"]].rename(columns={"score": "value"})
        ranked["caption"] = None
        what = f"score at draw time in {manifest.name} (selected samples only)"
    # Ties broken by key, so the sheet is the same run to run.
    ranked = ranked.sort_values(
        ["value", "key"], ascending=[False, True], kind="mergesort", ignore_index=True
    )
    halves = {"highest": ranked.head(top), "lowest": ranked.tail(top).iloc[::-1]}
    section = Section("Highest- and lowest-scored samples", "samples", figures_first=True)
    section.text = f"Ranked by {what}."
    wanted = pd.concat(halves.values())
    images = read_images(shards, wanted) if shards else {}
    captions = _captions(wanted, shards) if wanted["caption"].isna().any() and shards else {}
    if not shards:
        section.notes.append("no --shards given: captions only, no images")
    for name, half in halves.items():
        rows = []
        samples = []
        for row in half.itertuples():
            caption = row.caption if isinstance(row.caption, str) else captions.get(row.key, "")
            kind = noise.get(row.key) if noise is not None else None
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
                    f"The {len(half)} samples with the {name} {what}: key · score"
                    + (" · noise kind" if noise is not None else "")
                    + ", then the caption.",
                )
            )
        headers = ["key", what.split(" (")[0]] + (["noise"] if noise is not None else []) + ["caption"]
        section.tables.append(Table(headers, rows, f"{name} {len(half)}"))
    return section


def _captions(wanted: pd.DataFrame, shards: str) -> dict[str, str]:
    """Captions from the shards' tables, for manifest rows (which carry none)."""
    files = sorted(Path(shards).glob("*.parquet"))
    if not files:
        return {}
    import pyarrow.parquet as pq

    keys = set(wanted["key"])
    table = pd.concat(pq.read_table(f, columns=["key", "caption"]).to_pandas() for f in files)
    table = table[table["key"].isin(keys)].drop_duplicates("key")
    return dict(zip(table["key"], table["caption"].fillna(""), strict=True))
