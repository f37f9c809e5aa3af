"""curate.cost: a learner's total follows the inputs its artefacts record and counts each upstream part once.

Runs are written by the trainer's own writers with planned costs; score files by the scorer's writer with
planted costs and checkpoints; the manifests by a real `select`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from builders import unit, write_scores

from curate.cost import Cost, Part, amortised, cost_at_steps, lineage
from curate.score.schema import cost_metadata
from curate.select import SelectConfig, select
from curate.train import DataConfig, OnlineJestConfig, TrainConfig
from curate.train.run import MetricsWriter, write_config

KEYS = [f"{i:05d}" for i in range(200)]


def _run(folder: Path, flops: float, seconds: float, manifest: str | None = None, ref: str | None = None):
    """A 40-step run's folder as `curate train` writes it, costing `flops` and `seconds` a step."""
    folder.mkdir(parents=True)
    online = OnlineJestConfig(ref=ref, ratio=0.5, chunks=2) if ref else None
    config = TrainConfig(
        DataConfig(("shards/",), manifest), str(folder), batch_size=10, steps=40, online=online
    )
    write_config(folder, config, {"embed_dim": 8})
    with MetricsWriter(folder) as metrics:
        for done in range(10, 41, 10):
            metrics.write({"step": done, "loss": 1.0, "flops": flops * done, "seconds": seconds * done})
    return folder


def _scores(folder: Path, checkpoint: Path | None, step: int | None, cost: tuple[float, float] | None):
    """Two score files of the same 200 keys (planted embeddings), each costing `cost`, scored by
    `checkpoint` after `step` steps."""
    rng = np.random.default_rng(len(str(folder)))
    extra = cost_metadata(*cost) if cost else {}
    if checkpoint is not None:
        extra |= {"curate.checkpoint": str(checkpoint), "curate.checkpoint_step": str(step)}
    for shard, keys in (("00000.tar", KEYS[:100]), ("00001.tar", KEYS[100:])):
        image, text = unit(rng.standard_normal((100, 8))), unit(rng.standard_normal((100, 8)))
        write_scores(folder, shard, keys, image, text, extra=extra)
    return folder


def _select(scores: Path, out: Path, learner: Path | None = None) -> Path:
    config = SelectConfig(
        ratio=0.5,
        super_batch=20,
        chunks=2,
        criterion="learnability" if learner else "easy",
        learner=str(learner) if learner else None,
        device="cpu",
    )
    select(str(scores), str(out), config)
    return out


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict[str, Path]:
    """reference (1e9 FLOPs, 1 s a step) → its step-20 checkpoint scores the crawl (5e9, 3 s a file); uniform
    (2e9, 2 s a step) → its step-10 checkpoint scores the crawl as the learner (1e9, 1 s a file); a
    learnability manifest of both; learners on it, online on the reference's scores, and so on."""
    root = tmp_path_factory.mktemp("cost")
    reference = _run(root / "runs/reference", 1e9, 1.0)
    uniform = _run(root / "runs/uniform", 2e9, 2.0)
    ref_scores = _scores(root / "scores/reference", reference / "checkpoints/step_20.pt", 20, (5e9, 3.0))
    learner_scores = _scores(root / "scores/learner", uniform / "checkpoints/step_10.pt", 10, (1e9, 1.0))
    latest_scores = _scores(root / "scores/latest", reference / "latest.pt", 40, (5e9, 3.0))
    manifest = _select(ref_scores, root / "manifests/learnability", learner_scores)
    # Both of the reference's checkpoints upstream: its training counts once, to the later one.
    twice = _select(ref_scores, root / "manifests/twice", latest_scores)
    return {
        "root": root,
        "reference": reference,
        "uniform": uniform,
        "ref_scores": ref_scores,
        "learner_scores": learner_scores,
        "manifest": manifest,
        "learnability": _run(root / "runs/learnability", 1e9, 1.0, manifest=str(manifest)),
        "online": _run(root / "runs/online", 3e9, 3.0, ref=str(ref_scores)),
        "twice": _run(root / "runs/twice", 1e9, 1.0, manifest=str(twice)),
        "twice_manifest": twice,
    }


def _selection_seconds(manifest: Path) -> float:
    return json.loads((manifest / "summary.json").read_text())["seconds"]


def test_a_learnability_learner_pays_for_both_models_trainings_and_scorings(chain):
    cost = lineage(chain["learnability"])
    assert cost.own.cost == Cost(40e9, 40.0) and cost.gaps == ()
    parts = {part.label: (part.cost, part.step) for part in cost.upstream}
    assert parts == {
        "scoring scores/reference": (Cost(10e9, 6.0), None),
        "training runs/reference to step 20": (Cost(20e9, 20.0), 20),  # its checkpoint's, not its last step
        "scoring scores/learner": (Cost(2e9, 2.0), None),
        "training runs/uniform to step 10": (Cost(20e9, 20.0), 10),
        "selection manifests/learnability": (Cost(0.0, _selection_seconds(chain["manifest"])), None),
    }
    total = 40e9 + 10e9 + 20e9 + 2e9 + 20e9
    assert cost.total.flops == pytest.approx(total)
    assert cost.total.seconds == pytest.approx(40 + 6 + 20 + 2 + 20 + _selection_seconds(chain["manifest"]))


def test_a_run_reached_through_two_checkpoints_counts_once_to_the_later(chain):
    training = [p for p in lineage(chain["twice"]).upstream if p.kind == "training"]
    assert [(p.label, p.cost) for p in training] == [("training runs/reference to step 40", Cost(40e9, 40.0))]


def test_online_jest_inherits_its_reference_scores_and_shared_parts_split(chain):
    online = lineage(chain["online"])
    assert online.total.flops == pytest.approx(120e9 + 10e9 + 20e9)
    uniform = lineage(chain["uniform"])
    assert uniform.upstream == () and uniform.total == Cost(80e9, 80.0)
    learners = {"online": online, "learnability": lineage(chain["learnability"]), "uniform": uniform}
    shared = amortised(learners)
    # The reference's scoring and its training to step 20 serve two learners: half each.
    assert shared["online"].flops == pytest.approx(120e9 + (10e9 + 20e9) / 2)
    assert shared["learnability"].flops == pytest.approx(40e9 + (10e9 + 20e9) / 2 + 2e9 + 20e9)
    assert shared["uniform"] == uniform.total


def test_cost_at_eval_steps_interpolates_between_log_lines(chain):
    flops, seconds = cost_at_steps(chain["reference"], np.array([5, 10, 25, 40]))
    assert flops.tolist() == [5e9, 10e9, 25e9, 40e9] and seconds.tolist() == [5.0, 10.0, 25.0, 40.0]


def test_what_cannot_be_followed_is_named_and_the_total_is_a_lower_bound(chain, tmp_path):
    uncounted = _scores(tmp_path / "old_scores", None, None, None)  # written before costs were recorded
    run = _run(tmp_path / "online_old", 1e9, 1.0, ref=str(uncounted))
    cost = lineage(run)
    assert cost.gaps == (f"{uncounted}: 2 of 2 score files record no cost",)
    moved = _run(tmp_path / "moved", 1e9, 1.0, manifest=str(tmp_path / "gone"))
    assert lineage(moved).gaps == (f"manifest {tmp_path / 'gone'} is not there",)
    assert lineage(moved).total == Cost(40e9, 40.0)


def test_with_the_reference_given_its_training_is_not_charged_but_its_scoring_and_the_early_learner_are(
    chain,
):
    cost = lineage(chain["learnability"])
    reference_training = Part("training", str(chain["reference"]), Cost(20e9, 20.0), 20)
    assert cost.references == (str(chain["reference"]),)
    assert cost.reference_training == (reference_training,)
    # Its scoring of the crawl stays, and so does the early learner (uniform to step 10) and its scoring:
    # they were made for this learner, not given.
    assert cost.without_reference_training.flops == pytest.approx(40e9 + 10e9 + 2e9 + 20e9)
    assert cost.total.flops - cost.without_reference_training.flops == pytest.approx(20e9)
    online = lineage(chain["online"])
    assert online.references == (str(chain["reference"]),)
    assert online.without_reference_training == Cost(120e9 + 10e9, 120.0 + 6.0)
    uniform = lineage(chain["uniform"])
    assert uniform.references == () and uniform.without_reference_training == uniform.total


def test_a_reference_that_also_scored_as_the_learner_stays_charged(chain):
    # The twice manifest reads the reference's step-20 scores as reference and its latest as the learner's:
    # its training serves as a learner too, so giving the reference takes nothing off.
    cost = lineage(chain["twice"])
    assert cost.references == (str(chain["reference"]),)
    assert cost.reference_training == ()
    # summed in another order: equal up to rounding
    assert cost.without_reference_training.flops == pytest.approx(cost.total.flops, rel=1e-12)
    assert cost.without_reference_training.seconds == pytest.approx(cost.total.seconds, rel=1e-12)


def test_imported_embeddings_are_a_named_part_that_costs_nothing(tmp_path):
    """A learner on a selection of a pool's shipped embeddings (`curate import`) inherits them as a part of
    its lineage that says they were imported, at zero FLOPs and seconds, with no gap."""
    scores = _scores(tmp_path / "scores", None, None, (0.0, 0.0))
    for path in scores.glob("*.parquet"):  # what `curate import` records beside its zero cost
        table = pq.read_table(path)
        metadata = {
            **table.schema.metadata,
            b"curate.imported": b"OpenAI CLIP ViT-L/14 as shipped by DataComp",
        }
        pq.write_table(table.replace_schema_metadata(metadata), path)
    manifest = _select(scores, tmp_path / "manifest")
    learner = lineage(_run(tmp_path / "runs/jest", 2e9, 2.0, manifest=str(manifest)))
    (imported,) = [part for part in learner.upstream if part.kind == "imported"]
    assert imported.cost == Cost(0.0, 0.0) and not learner.gaps
    assert imported.label.endswith("(imported, not computed: 0 FLOPs to the user)")
    assert learner.total.flops == 2e9 * 40
