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
measurement, not part of the cost. What cannot be followed (a moved folder, a file written before costs
were recorded) is named in `Lineage.gaps`, and the total is then a lower bound.
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

    kind: str  # "training", "scoring" or "selection"
    path: str  # the run, score folder or manifest folder, absolute
    cost: Cost
    step: int | None = None  # training: the steps counted

    @property
    def label(self) -> str:
        name = "/".join(Path(self.path).parts[-2:])
        return f"{self.kind} {name}" + (f" to step {self.step}" if self.step is not None else "")


@dataclass(frozen=True)
class Lineage:
    own: Part  # the run's own training
    upstream: tuple[Part, ...]  # everything it inherited, each counted once
    gaps: tuple[str, ...] = ()  # what could not be followed: the totals are then lower bounds

    @property
    def inherited(self) -> Cost:
        return sum((part.cost for part in self.upstream), Cost())

    @property
    def total(self) -> Cost:
        return self.own.cost + self.inherited


@dataclass
class _Walk:
    parts: dict[tuple[str, str], Part] = field(default_factory=dict)
    gaps: list[str] = field(default_factory=list)
    visited: set[tuple[str, str]] = field(default_factory=set)  # (kind, path) whose inputs were followed

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
    """The run's own training and everything upstream of it."""
    folder = Path(run).absolute()
    walk = _Walk()
    own = _training(folder, None, walk)
    _run_inputs(folder, walk)
    upstream = tuple(part for key, part in walk.parts.items() if key != ("training", str(folder)))
    return Lineage(own, upstream, tuple(walk.gaps))


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
        _scores(Path(config.online.ref), walk)
    if Path(config.model).is_file():  # trained on from a checkpoint
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
            _scores(Path(scores), walk)


def _scores(path: Path, walk: _Walk) -> None:
    folder = path.absolute()
    if not walk.first_visit("scores", folder):
        return
    try:
        cost = read_scoring_cost(folder)
    except CurateError as error:
        walk.gap(str(error))
        return
    if cost.uncounted:
        walk.gap(f"{folder}: {cost.uncounted} of {cost.files} score files record no cost")
    walk.add(Part("scoring", str(folder), Cost(cost.flops, cost.seconds)))
    if cost.checkpoint:
        _checkpoint(Path(cost.checkpoint), cost.checkpoint_step, walk)


def _checkpoint(path: Path, step: int | None, walk: _Walk) -> None:
    """The run that wrote the checkpoint, to the checkpoint's step. A checkpoint from elsewhere (open_clip's
    own, a download) has no curate run behind it: its training is not ours to count, and no gap."""
    run = path.absolute().parent
    if run.name == CHECKPOINTS_DIR:
        run = run.parent
    if not (run / METRICS_FILE).is_file():
        return
    if step is None:
        match = re.fullmatch(r"step_(\d+)\.pt", path.name)
        step = int(match.group(1)) if match else None
    _training(run, step, walk)
    _run_inputs(run, walk)
