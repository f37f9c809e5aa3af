"""examples/pipeline.mk end to end at toy size: every artefact exists and is well-formed."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from curate.cost import Cost, lineage
from curate.score import ScoreMetadata

REPO = Path(__file__).resolve().parent.parent
# One learner of each kind the pipeline makes (independent and random share jest's rule, with another
# --method): a uniform run, one K times as long, a manifest's batches, learnability's learner scores, a
# global filter and online JEST.
LEARNERS = ("uniform", "uniform-3x", "jest", "learnability", "clipscore", "online")

pytestmark = pytest.mark.slow  # every step is a process of its own, paying the torch import


def test_the_example_pipeline_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    settings = ["N=300", "REF_STEPS=4", "STEPS=4", "BATCH=16", "EARLY=2", "WORKERS=0", "SEED=3"]
    settings += ["SYNTH_FLAGS=--zipf 1.5 --misaligned 0.25 --eval-per-class 4"]
    settings += [f"LEARNERS={' '.join(LEARNERS)}"]
    command = [
        "make",
        "-s",
        "-j2",  # as `make demo` runs it: independent steps at once
        "-f",
        str(REPO / "examples/pipeline.mk"),
        f"CURATE={sys.executable} -m curate_cli",
        f"OUT={out}",
    ]
    result = subprocess.run([*command, *settings], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    # It ends with the report and the headline: a line per learner (not the reference, which they inherit),
    # its top-1 and total compute against uniform's.
    printed = result.stdout.splitlines()
    report_line = next(i for i, line in enumerate(printed) if line.endswith(f"→ {out}/report/index.html"))
    assert printed[report_line].startswith("wrote ")
    headline = printed[report_line + 1 :]
    assert [line.split()[0] for line in headline] == list(LEARNERS)
    assert all("total compute" in line and "uniform's FLOPs" in line for line in headline)
    # Off a terminal, progress is whole lines naming the run, so parallel jobs' lines can be told apart.
    assert re.search(r"^train uniform 4/4 steps 100% ", result.stderr, re.MULTILINE), result.stderr[-2000:]

    assert (
        sum(json.loads((out / "data/web/sizes.json").read_text()).values()) == 300
    )  # corrupt bytes included
    for scores in ("reference", "learner"):
        files = sorted((out / "scores" / scores).glob("*.parquet"))
        assert len(files) == 1 and pq.read_table(files[0]).num_rows == 300
        assert ScoreMetadata.read(files[0]).model.endswith(".pt")
    for name in ("jest", "learnability", "clipscore"):
        manifest = pq.read_table(out / "manifests" / name / "manifest.parquet")
        assert manifest.column_names == ["key", "shard", "batch", "super_batch", "chunk", "score", "sha256"]
        # STEPS=4 batches of 16, one per learner step (300 eligible at most: 3 super-batches of 80 a pass)
        assert manifest["batch"].to_pylist() == [b for b in range(4) for _ in range(16)], name
        assert json.loads((out / "manifests" / name / "summary.json").read_text())
        # The learner trained exactly those batches, in order.
        trained = pq.read_table(out / "runs" / name / "batches.parquet")
        assert trained["key"].to_pylist() == manifest["key"].to_pylist(), name
    exported = json.loads((out / "curated/sizes.json").read_text())
    assert sum(exported.values()) == pq.read_table(out / "manifests/jest/manifest.parquet").num_rows
    for run in ("reference", *LEARNERS):
        steps = 12 if run == "uniform-3x" else 4
        lines = [json.loads(line) for line in (out / "runs" / run / "metrics.jsonl").read_text().splitlines()]
        assert lines[-1]["step"] == steps and "zeroshot_top1" in lines[-1]["eval"], run
        assert torch.load(out / "runs" / run / "latest.pt", weights_only=True)["step"] == steps
        # Everything counted: never less than its own training; the reference's, its scoring and the
        # selection exactly, for a learner on a manifest.
        cost = lineage(out / "runs" / run)
        assert cost.gaps == () and cost.total.flops >= cost.own.cost.flops > 0, run
        assert cost.own.cost == Cost(lines[-2]["flops"], lines[-2]["seconds"]), run
    reference = [json.loads(line) for line in (out / "runs/reference/metrics.jsonl").read_text().splitlines()]
    scoring = [pq.read_schema(f).metadata for f in sorted((out / "scores/reference").glob("*.parquet"))]
    selection = json.loads((out / "manifests/jest/summary.json").read_text())["seconds"]
    jest = lineage(out / "runs/jest")
    upstream = Cost(reference[-2]["flops"], reference[-2]["seconds"] + selection) + Cost(
        sum(float(m[b"curate.flops"]) for m in scoring), sum(float(m[b"curate.seconds"]) for m in scoring)
    )
    assert jest.inherited.flops == pytest.approx(upstream.flops, rel=1e-12)
    assert jest.inherited.seconds == pytest.approx(upstream.seconds, rel=1e-12)
    assert "selected_learnability" in json.loads(
        (out / "runs/online/metrics.jsonl").read_text().splitlines()[-2]
    )
    page = (out / "report/index.html").read_text()
    pictures = re.findall(r'src="([^"]+\.png)"', page)
    assert pictures and all((out / "report" / picture).is_file() for picture in pictures)
    assert all(run in page for run in LEARNERS)

    table = subprocess.run(
        [sys.executable, str(REPO / "examples/results_table.py"), str(out)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + len(LEARNERS)  # header and one row per learner
    assert all(len(row.split("|")) == 12 for row in rows)
    assert "JEST (batches) strictly above CLIP-score filter" in table
    assert "reference (curated set): zero-shot top-1" in table
