"""`make paper`'s scripts, quickly: the verdicts and the reach read off curves (examples/paper_tables.py) on
made-up numbers, and the chunks experiment (examples/chunks_vs_gibbs.py) on planted score folders written by
the scorer's own writer. The whole of examples/paper.mk runs only at toy size, by hand (its header)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from builders import unit, write_scores

from curate.score.schema import OK

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import chunks_vs_gibbs  # noqa: E402
import paper_tables  # noqa: E402

# ---------------------------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize(
    "holds, expected",
    [
        ((True, True, True), "holds"),
        ((True, False, True), "holds in 2 of 3 seeds"),
        ((False, False, False), "does not hold here"),
        ((True,), "holds"),
        ((), "does not hold here"),
    ],
)
def test_a_verdict_says_in_how_many_seeds_a_claim_holds(holds, expected):
    assert paper_tables.verdict(holds) == expected


def test_rising_is_strict_and_the_recovered_share_is_of_the_oracles_gain():
    assert paper_tables.rises([0.1, 0.2, 0.3]) and not paper_tables.rises([0.1, 0.3, 0.3])
    assert paper_tables.recovered_share(jest=0.9, oracle=1.0, random=0.0) == pytest.approx(0.9)
    assert paper_tables.recovered_share(jest=1.2, oracle=1.0, random=0.0) > 1  # above the oracle's mean
    assert math.isnan(paper_tables.recovered_share(jest=0.5, oracle=0.0, random=0.0))


def test_the_first_reach_across_budgets_is_the_eval_with_the_fewest_flops():
    curves = {
        "100 steps": [(50, 0.10, 5.0), (100, 0.20, 10.0)],
        "400 steps": [(50, 0.08, 5.5), (100, 0.19, 11.0), (200, 0.25, 21.0), (400, 0.30, 41.0)],
    }
    assert paper_tables.first_reach(curves, 0.20) == ("100 steps", 100, 10.0)
    assert paper_tables.first_reach(curves, 0.22) == ("400 steps", 200, 21.0)
    assert paper_tables.first_reach(curves, 0.5) is None


class _Run:
    """What the compute claim reads of a learner: its eval curve in each accounting, final top-1 and total."""

    def __init__(self, top1: list[float], own: list[float], reference_training: float = 0.0, steps=None):
        self.steps = steps or [10 * (i + 1) for i in range(len(top1))]
        self.top1, self.own, self.reference = top1, own, reference_training

    def curve(self, reference_given: bool = False):
        extra = 0.0 if reference_given else self.reference
        return [(s, t, f + extra) for s, t, f in zip(self.steps, self.top1, self.own, strict=True)]

    def final(self) -> float:
        return self.top1[-1]

    def total_flops(self, reference_given: bool = False) -> float:
        return self.curve(reference_given)[-1][2]


def test_the_compute_claim_reads_each_accounting_off_the_curves():
    # uniform-3x: 300 FLOPs to 0.30. JEST's reference cost 100 to train; its 100-step budget reaches 0.30
    # after 60 of its own FLOPs (plus 20 of scoring, in `own` here), the 200-step one later.
    longer = [_Run([0.2, 0.3], [150.0, 300.0]), _Run([0.2, 0.4], [150.0, 300.0])]
    jest = {
        100: [_Run([0.31, 0.33], [80.0, 140.0], 100.0), _Run([0.2, 0.3], [80.0, 140.0], 100.0)],
        200: [_Run([0.2, 0.35], [80.0, 260.0], 100.0), _Run([0.2, 0.3], [80.0, 260.0], 100.0)],
    }
    claims, lines = paper_tables.compute_claims(jest, longer, "tiny")
    given, charged = claims
    assert "reference given" in given.name and "charged" in charged.name
    # Seed 0 reaches at 80 given (80 / 300 = 0.27 ≤ 1/3) and 180 charged (0.60); seed 1 never reaches 0.4.
    assert given.holds == (True, False) and given.verdict == "holds in 1 of 2 seeds"
    assert charged.holds == (False, False) and charged.verdict == "does not hold here"
    given_line, charged_line = (next(line for line in lines if line.startswith(f"- {n}")) for n in
                                ("reference given", "reference's training charged"))  # fmt: skip
    assert "0.27" in given_line and "100 steps, step 10" in given_line and "seed 1: not reached" in given_line
    assert "0.60" in charged_line


# ---------------------------------------------------------------------------------------------- chunks


def _score_folders(root: Path, n: int = 120) -> tuple[Path, Path]:
    """A reference that sees clean pairs as matching and a learner that half does, over the same keys;
    the learner's folder lacks the last 10 keys and the reference could not score key 0."""
    rng = np.random.default_rng(0)
    keys = [f"{i:05d}" for i in range(n)]
    image = unit(rng.standard_normal((n, 16)))
    clean = (np.arange(n) % 3 != 0)[:, None]
    text = unit(
        np.where(clean, image + 0.3 * rng.standard_normal(image.shape), rng.standard_normal(image.shape))
    )
    status = ["undecodable_image"] + [OK] * (n - 1)
    write_scores(root / "reference", "00000.tar", keys, image, text, status)
    noisy = unit(0.5 * text + rng.standard_normal(text.shape))
    write_scores(root / "learner", "00000.tar", keys[:-10], image[:-10], noisy[:-10])
    return root / "reference", root / "learner"


def test_the_pool_is_the_keys_eligible_in_both_folders(tmp_path):
    pool = chunks_vs_gibbs.joined_pool(*_score_folders(tmp_path))
    assert pool.keys == [f"{i:05d}" for i in range(1, 110)]
    assert pool.reference.size == pool.learner.size == 109


def test_super_batches_are_disjoint_and_as_many_as_fit(tmp_path):
    batches = chunks_vs_gibbs.draw_super_batches(100, 30, 5, seed=0)
    assert len(batches) == 3 and all(len(b) == 30 for b in batches)
    assert len(set(np.concatenate(batches).tolist())) == 90
    with pytest.raises(SystemExit, match="needs 120 samples"):
        chunks_vs_gibbs.draw_super_batches(100, 120, 1, seed=0)


def test_chunks_json_records_every_method_in_batch_learnability(tmp_path):
    reference, learner = _score_folders(tmp_path)
    out = tmp_path / "chunks.json"
    chunks_vs_gibbs.main(
        [str(reference), str(learner), "--chunks", "4", "1", "2", "--batch-size", "8", "--ratio", "0.8",
         "--super-batches", "3", "--gibbs-steps", "200", "--gibbs-chains", "4", "-o", str(out)]
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert (
        result["parameters"]["super_batch"] == 40 and result["parameters"]["super_batches"] == 2
    )  # 109 // 40
    assert result["parameters"]["chunks"] == [1, 2, 4] and result["parameters"]["gibbs"]["burn_in"] == 100
    for line in [*result["super_batch_results"], result["mean"]]:
        assert set(line) == {"random", "independent", "top_own_score", "jest", "gibbs_mean",
                             "gibbs_later_half_mean", "gibbs_best"}  # fmt: skip
        assert set(line["jest"]) == {"1", "2", "4"}
        assert line["gibbs_best"] >= line["gibbs_mean"]
    # The deterministic top-b by own score is the best a diagonal-only pick can do; the learnability is
    # high where the learner has not learned a pair the reference has.
    mean = result["mean"]
    assert mean["top_own_score"] >= mean["independent"] > mean["random"]
    first = result["super_batch_results"][0]["jest"]["4"]
    chunks_vs_gibbs.main(
        [str(reference), str(learner), "--chunks", "4", "--batch-size", "8", "--super-batches", "1",
         "--gibbs-steps", "200", "--gibbs-chains", "4", "-o", str(tmp_path / "again.json")]
    )  # fmt: skip
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["super_batch_results"][0]["jest"]["4"] == first  # seeded: the same draw
