"""What a learner cost with everything counted: its own training plus everything upstream of it.

Each artefact records its own cost and its inputs (docs/reference/formats.md, "Cost"):

    run          RUN/metrics.jsonl: `flops` and `seconds` at every log line (one at every checkpoint);
                 RUN/config.json: its manifest, its online reference scores, a checkpoint it started from
    score folder each file's metadata: `curate.flops`, `curate.seconds`, and the checkpoint that scored it
                 (`curate.checkpoint`, `curate.checkpoint_step`), which leads to the run that trained it
    manifest     its metadata: the score folders it read (`curate.scores`, `curate.learner_scores`);
                 summary.json: the seconds selection took

`lineage(run)` follows those links to the end and counts each thing once (a run reached twice, through two
of its checkpoints, counts to the later one). FLOPs are torch's FlopCounterMode count of one forward through
both towers (`ImageTextModel.forward_flops`): training pays 3 per trained sample (and online JEST 1 per
scored one), scoring 1 per embedded sample. Selection records seconds only: its FLOPs (a few B x b
similarity matrices per super-batch) are under a thousandth of scoring the same samples. Evaluation is a
measurement, not part of the cost. What cannot be followed (a moved or deleted folder or checkpoint, a file
written before costs were recorded) is named in `Lineage.gaps`, and the total is then a lower bound: the
report marks it so (`≥`) in its table and its headline.

Two accountings: `Lineage.total` charges everything, the reference's training included (what a user pays
who trains the reference for this learner); `Lineage.without_reference_training` is the common case of a
reference one already has: its scoring of the crawl is charged, its training (and whatever that training
inherited) is not. "The reference" is a run whose checkpoint scored a score folder read as reference scores
(a manifest's `curate.scores`, online JEST's `--ref`); an early learner's scores (`curate.learner_scores`,
offline learnability) are made for this learner, so their run's training stays charged in both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from curate.errors import CurateError
from curate.score.schema import read_scoring_cost
from curate.select.manifest import (
    LEARNER_SCORES_METADATA_KEY,
    MANIFEST_FILE,
    SCORES_METADATA_KEY,
    holds_manifest,
    manifest_metadata,
    read_summary,
)
from curate.train.run import CHECKPOINTS_DIR, METRICS_FILE, read_config, read_metrics


@dataclass(frozen=True)
class Cost:
    flops: float = 0.0
    seconds: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.seconds + other.seconds)

    def scaled(self, factor: float) -> Cost:
        return Cost(self.flops * factor, self.seconds * factor)


@dataclass(frozen=True)
class Part:
    """One thing a learner paid for: a run's training (to `step`), a folder's scoring or a selection."""

    # "training", "scoring", "imported" (embeddings a pool ships: no FLOPs of the user's) or "selection"
    kind: str
    path: str  # the run, score folder or manifest folder, absolute
    cost: Cost
    step: int | None = None  # training: the steps counted

    @property
    def label(self) -> str:
        name = "/".join(Path(self.path).parts[-2:])
        suffix = f" to step {self.step}" if self.step is not None else ""
        if self.kind == "imported":
            suffix = " (imported, not computed: 0 FLOPs to the user)"
        return f"{self.kind} {name}{suffix}"


@dataclass(frozen=True)
class Lineage:
    own: Part  # the run's own training
    upstream: tuple[Part, ...]  # everything it inherited, each counted once
    gaps: tuple[str, ...] = ()  # what could not be followed: the totals are then lower bounds
    references: tuple[str, ...] = ()  # the runs whose checkpoints scored the reference scores it reads
    # What it inherits with those references given: their scoring, not their training (None: all of it).
    upstream_reference_given: tuple[Part, ...] | None = None

    @property
    def inherited(self) -> Cost:
        return sum((part.cost for part in self.upstream), Cost())

    @property
    def total(self) -> Cost:
        return self.own.cost + self.inherited

    @property
    def inherited_reference_given(self) -> Cost:
        given = self.upstream if self.upstream_reference_given is None else self.upstream_reference_given
        return sum((part.cost for part in given), Cost())

    @property
    def without_reference_training(self) -> Cost:
        """The total with the reference given (a model one already has): its scoring charged, not its
        training."""
        return self.own.cost + self.inherited_reference_given

    @property
    def reference_training(self) -> tuple[Part, ...]:
        """The upstream parts the reference-given accounting leaves out."""
        if self.upstream_reference_given is None:
            return ()
        kept = set(self.upstream_reference_given)
        return tuple(part for part in self.upstream if part not in kept)


@dataclass
class _Walk:
    reference_given: bool = False  # leave the runs behind reference scores out (their scoring stays)
    parts: dict[tuple[str, str], Part] = field(default_factory=dict)
    gaps: list[str] = field(default_factory=list)
    visited: set[tuple[str, str]] = field(default_factory=set)  # (kind, path) whose inputs were followed
    references: list[str] = field(default_factory=list)  # runs whose checkpoints scored reference scores

    def add(self, part: Part) -> None:
        key = (part.kind, part.path)
        kept = self.parts.get(key)
        if kept is None or (part.step or 0) > (kept.step or 0):
            self.parts[key] = part

    def first_visit(self, kind: str, path: Path) -> bool:
        """Whether the inputs of this run or score folder are still to be followed (a diamond: twice)."""
        key = (kind, str(path))
        if key in self.visited:
            return False
        self.visited.add(key)
        return True

    def gap(self, text: str) -> None:
        if text not in self.gaps:
            self.gaps.append(text)


def lineage(run: str | Path) -> Lineage:
    """The run's own training and everything upstream of it, in both accountings (module docstring)."""
    folder = Path(run).resolve()  # as the runs it reaches through checkpoints are named: links resolved
    own, everything = _walk_from(folder, _Walk())
    _, given = _walk_from(folder, _Walk(reference_given=True))
    return Lineage(
        own,
        _upstream(everything, folder),
        tuple(everything.gaps),
        tuple(everything.references),
        _upstream(given, folder),
    )


def _walk_from(run: Path, walk: _Walk) -> tuple[Part, _Walk]:
    own = _training(run, None, walk)
    _run_inputs(run, walk)
    return own, walk


def _upstream(walk: _Walk, run: Path) -> tuple[Part, ...]:
    return tuple(part for key, part in walk.parts.items() if key != ("training", str(run)))


def amortised(lineages: Mapping[str, Lineage]) -> dict[str, Cost]:
    """Each learner's total with every upstream part shared out equally among the learners given that
    inherit it (a reference trained once and scored once, serving several learners)."""
    sharing: dict[tuple[str, str], int] = {}
    for item in lineages.values():
        for part in item.upstream:
            sharing[(part.kind, part.path)] = sharing.get((part.kind, part.path), 0) + 1
    return {
        name: item.own.cost
        + sum((p.cost.scaled(1 / sharing[(p.kind, p.path)]) for p in item.upstream), Cost())
        for name, item in lineages.items()
    }


def cost_at_steps(run: str | Path, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The run's own FLOPs and seconds after each of `steps`, interpolated between its log lines."""
    logs = _logs(Path(run))
    if not logs:
        return np.full(len(steps), np.nan), np.full(len(steps), np.nan)
    at = np.array([0.0] + [record["step"] for record in logs])
    flops = np.array([0.0] + [record.get("flops", np.nan) for record in logs])
    seconds = np.array([0.0] + [record.get("seconds", np.nan) for record in logs])
    return np.interp(steps, at, flops), np.interp(steps, at, seconds)


# ---------------------------------------------------------------------------------------------- links


def _logs(run: Path) -> list[dict]:
    records = [r for r in read_metrics(run) if "loss" in r]
    by_step = {int(r["step"]): r for r in records}  # a resumed run's re-logged step: the last one wins
    return [by_step[step] for step in sorted(by_step)]


def _training(run: Path, step: int | None, walk: _Walk) -> Part:
    """The run's training cost to `step` (its last logged step when None)."""
    logs = _logs(run)
    if not logs:
        walk.gap(f"{run}: no log lines")
        return Part("training", str(run), Cost(), 0)
    last = logs[-1]["step"] if step is None else step
    if "seconds" not in logs[-1]:
        walk.gap(f"{run}: trained before curate recorded seconds")
    flops, seconds = cost_at_steps(run, np.array([last]))
    part = Part("training", str(run), Cost(float(flops[0]), float(np.nan_to_num(seconds[0]))), int(last))
    walk.add(part)
    return part


def _run_inputs(run: Path, walk: _Walk) -> None:
    if not walk.first_visit("run", run):
        return
    try:
        config = read_config(run)
    except CurateError as error:
        walk.gap(str(error))
        return
    if config is None:
        walk.gap(f"{run}: no config.json, so its inputs are unknown")
        return
    if config.data.manifest:
        _manifest(Path(config.data.manifest), walk)
    if config.online is not None:
        _scores(Path(config.online.ref), walk, reference=True)
    if Path(config.model).is_file() or config.model.endswith(".pt"):  # trained on from a checkpoint
        _checkpoint(Path(config.model), None, walk)


def _manifest(path: Path, walk: _Walk) -> None:
    folder = (path.parent if path.name == MANIFEST_FILE else path).absolute()
    if not holds_manifest(folder):  # manifest.parquet or its parts
        walk.gap(f"manifest {folder} is not there")
        return
    metadata = manifest_metadata(folder)
    try:
        summary = read_summary(folder)
    except CurateError as error:
        walk.gap(str(error))
        summary = {}
    inputs = summary.get("inputs") if isinstance(summary.get("inputs"), dict) else {}
    seconds = summary.get("seconds")
    if isinstance(seconds, int | float):
        walk.add(Part("selection", str(folder), Cost(0.0, float(seconds))))
    elif summary:
        walk.gap(f"{folder}: no summary.json seconds")
    for key, name in ((SCORES_METADATA_KEY, "scores"), (LEARNER_SCORES_METADATA_KEY, "learner")):
        scores = metadata.get(key) or inputs.get(name)  # summary.json: manifests from before the metadata
        if scores:
            _scores(Path(scores), walk, reference=name == "scores")


def _scores(path: Path, walk: _Walk, reference: bool = False) -> None:
    """A score folder's scoring, then the run that trained its checkpoint: unless the folder is read as
    reference scores and the walk takes the reference as given."""
    # One folder read both as reference and as learner scores is followed in each role; one reached through
    # a link (a setting's folder linking its seed's scores) is the same folder, counted once.
    folder = path.resolve()
    if not walk.first_visit("reference scores" if reference else "scores", folder):
        return
    try:
        cost = read_scoring_cost(folder)
    except CurateError as error:
        walk.gap(str(error))
        return
    if cost.uncounted:
        walk.gap(f"{folder}: {cost.uncounted} of {cost.files} score files record no cost")
    walk.add(Part("imported" if cost.imported else "scoring", str(folder), Cost(cost.flops, cost.seconds)))
    if not cost.checkpoint:
        return
    run = _checkpoint_run(Path(cost.checkpoint))
    if reference and run is not None and str(run) not in walk.references:
        walk.references.append(str(run))
    if not (reference and walk.reference_given):
        _checkpoint(Path(cost.checkpoint), cost.checkpoint_step, walk)


def _checkpoint_run(path: Path) -> Path | None:
    """The curate run that wrote a checkpoint; None for one from elsewhere (open_clip's own, a download)."""
    run = path.resolve().parent
    if run.name == CHECKPOINTS_DIR:
        run = run.parent
    return run if (run / METRICS_FILE).is_file() else None


def _missing_checkpoint(path: Path) -> str:
    """What a gap names for a checkpoint that is not there: its run folder when that is gone too."""
    folder = path.parent.parent if path.parent.name == CHECKPOINTS_DIR else path.parent
    if not folder.exists():
        return f"{folder} is missing (it held the checkpoint {path.name}; its training is not counted)"
    return f"checkpoint {path} is missing (its training is not counted)"


def _checkpoint(path: Path, step: int | None, walk: _Walk) -> None:
    """The run that wrote the checkpoint, to the checkpoint's step. A checkpoint from elsewhere has no
    curate run behind it: its training is not ours to count, and no gap. One that is not there is a gap:
    whether a run of ours wrote it can no longer be told."""
    run = _checkpoint_run(path)
    if run is None:
        if not path.exists():
            # Deleted with the run that wrote it (or moved): that training is uncounted, so say so rather
            # than print a total that is silently lower than what was spent.
            walk.gap(_missing_checkpoint(path))
        return
    if step is None:
        match = re.fullmatch(r"step_(\d+)\.pt", path.name)
        step = int(match.group(1)) if match else None
    _training(run, step, walk)
    _run_inputs(run, walk)
