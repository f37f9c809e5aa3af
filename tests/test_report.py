"""curate report: a page and PNGs from planted scores, a real selection, runs written by the trainer's own
writers (planned numbers, so the table's cells are known) and one real online JEST run."""

from __future__ import annotations

import html
import io
import itertools
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import typer
from builders import unit, write_scores
from conftest import run_cli
from PIL import Image
from typer.testing import CliRunner

from curate.errors import CurateError
from curate.report import ReportConfig, classify, detect_kind, report, sections
from curate.report.load import read_run
from curate.score.schema import OK, cost_metadata
from curate.select import SelectConfig, select
from curate.train import DataConfig, OnlineJestConfig, TrainConfig, train
from curate.train.run import BatchLog, MetricsWriter, read_batches, write_config
from curate_cli.report import report_command

SCORING_COST = (5e9, 2.0)  # planted FLOPs and seconds of scoring each shard


# ---------------------------------------------------------------------------------------------- inputs


def _shard_table(shards: Path) -> pd.DataFrame:
    return pq.read_table(sorted(shards.glob("*.parquet")), columns=["key", "caption", "noise"]).to_pandas()


def _planted_scores(shards: Path, out: Path, checkpoint: Path | None = None) -> None:
    """Score files as `curate score` writes them, for a made-up reference that sees through the noise:
    clean pairs get nearly matching embeddings, noisy ones unrelated ones; corrupt images are not ok.
    `checkpoint`: the reference run's checkpoint (after 40 steps) that scored them."""
    extra = cost_metadata(*SCORING_COST)
    if checkpoint is not None:
        extra |= {"curate.checkpoint": str(checkpoint), "curate.checkpoint_step": "40"}
    rng = np.random.default_rng(0)
    for table in sorted(shards.glob("*.parquet")):
        rows = pq.read_table(table, columns=["key", "caption", "noise"]).to_pandas()
        image = unit(rng.standard_normal((len(rows), 16)))
        clean = (rows["noise"] == "none").to_numpy()[:, None]
        text = unit(
            np.where(clean, image + 0.3 * rng.standard_normal(image.shape), rng.standard_normal(image.shape))
        )
        status = [OK if kind != "corrupt" else "undecodable_image" for kind in rows["noise"]]
        write_scores(
            out,
            table.stem + ".tar",
            list(rows["key"]),
            image,
            text,
            status,
            captions=list(rows["caption"]),
            extra=extra,
        )


def _eval(step: int, base: float) -> dict:
    top1 = round(base + 0.01 * step, 4)
    return {
        "zeroshot_top1": top1, "zeroshot_top5": min(1.0, 3 * top1), "images": 64,
        "image_to_text_r1": top1 / 2, "image_to_text_r5": top1, "text_to_image_r1": top1 / 3,
        "text_to_image_r5": top1,
    }  # fmt: skip


def _planned_run(folder: Path, config: TrainConfig, keys: list[str], base: float) -> None:
    """A 40-step run as `curate train` writes it, with planned numbers: loss 7 - step/10, 1e9 FLOPs and a
    second a step, evals at steps 20 and 40 (top-1 = base + step/100), each step trained on the next 32 of
    `keys`."""
    folder.mkdir(parents=True)
    write_config(folder, config, {"embed_dim": 128})
    batches = BatchLog()
    with MetricsWriter(folder) as metrics:
        for done in range(1, 41):
            batches.add(done - 1, [keys[(32 * (done - 1) + i) % len(keys)] for i in range(32)])
            if done % 10 == 0:
                metrics.write(
                    {"step": done, "loss": 7.0 - done / 10, "lr": 1e-3, "samples_per_s": 100.0,
                     "logit_scale": 10.0, "logit_bias": -10.0, "flops": 1e9 * done, "seconds": 1.0 * done}
                )  # fmt: skip
            if done % 20 == 0:
                metrics.write({"step": done, "eval": _eval(done, base)})
    batches.write(folder)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, small_synth) -> dict:
    root = tmp_path_factory.mktemp("report")
    shards = Path(small_synth) / "web"
    scores, manifest, runs = root / "scores", root / "manifest", root / "runs"
    _planted_scores(shards, scores)
    config = SelectConfig(
        ratio=0.5, super_batch=100, chunks=4, criterion="easy", shards=str(shards), device="cpu"
    )
    select(str(scores), str(manifest), config)

    data = DataConfig((str(shards),), cache="memory", workers=0)
    base = TrainConfig(data, "", batch_size=32, steps=40)
    every_key = list(_shard_table(shards)["key"])
    chosen = pq.read_table(manifest / "manifest.parquet").column("key").to_pylist()
    _planned_run(runs / "baseline", base, every_key, 0.1)
    offline = TrainConfig(DataConfig((str(shards),), str(manifest)), "", batch_size=32, steps=40)
    _planned_run(runs / "offline", offline, chosen, 0.2)
    online = OnlineJestConfig(ref=str(scores), ratio=0.5, chunks=2)
    train(
        TrainConfig(
            data, str(runs / "online"), batch_size=16, steps=2, online=online, log_every=1,
            eval=f"{small_synth}/eval", eval_every=1,
        )
    )  # fmt: skip
    return {"root": root, "shards": shards, "scores": scores, "manifest": manifest, "runs": runs}


def _full_config(inputs: dict) -> ReportConfig:
    runs = inputs["runs"]
    return ReportConfig(
        runs=(str(runs / "baseline"), str(runs / "offline"), str(runs / "online")),
        scores=str(inputs["scores"]),
        manifests=(str(inputs["manifest"]),),
        shards=str(inputs["shards"]),
        top=6,
    )


@pytest.fixture(scope="module")
def full(inputs) -> Path:
    out = inputs["root"] / "out"
    report(_full_config(inputs), str(out))
    return out


def _rows(page: str) -> list[list[str]]:
    """Every table row of the page as its cells' text."""
    return [
        [html.unescape(c) for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row)]
        for row in re.findall(r"<tr>(.*?)</tr>", page)
    ]


# ---------------------------------------------------------------------------------------------- the page


def test_page_references_every_png_and_they_decode(full):
    page = (full / "index.html").read_text()
    referenced = re.findall(r'<img src="([^"]+)"', page)
    on_disk = sorted(p.name for p in full.glob("*.png"))
    assert sorted(referenced) == on_disk
    for name in ("eval_vs_step.png", "eval_vs_total_flops.png", "eval_vs_total_seconds.png",
                 "eval_vs_shared_flops.png", "training.png", "selection_1_similarity.png",
                 "selection_1_super_batches.png", "noise_shares.png", "similarity_by_noise.png",
                 "samples_highest.png", "samples_lowest.png"):  # fmt: skip
        assert name in referenced
    for name in on_disk:
        with Image.open(full / name) as image:
            image.load()
            assert image.width >= 300 and image.height >= 150
            pixels = np.asarray(image.convert("L"), dtype=np.float32)
        assert pixels.std() > 5, f"{name} looks blank"
    assert "http://" not in page and "https://" not in page  # nothing fetched: renders offline


def test_final_numbers_match_the_runs(full, inputs):
    page_rows = _rows((full / "index.html").read_text())
    header = next(r for r in page_rows if r[0] == "run" and "data" in r)
    rows = {r[0]: r for r in page_rows if len(r) == len(header)}
    cells = {name: {column: rows[name][i] for i, column in enumerate(header)} for name in rows if name in
             ("baseline", "offline", "online")}  # fmt: skip
    assert cells["baseline"] == {
        "run": "baseline", "data": "all data", "steps": "40", "final loss": "3", "own FLOPs": "4.000e+10",
        "inherited FLOPs": "0", "total FLOPs": "4.000e+10", "total FLOPs, reference given": "4.000e+10",
        "total seconds": "40",
        "total FLOPs, upstream shared": "4.000e+10", "zero-shot top-1": "0.5", "zero-shot top-5": "1",
        "image→text R@1": "0.25", "text→image R@1": "0.1667",
    }  # fmt: skip
    # The offline run inherits the scoring of every shard and the selection's seconds; the online run the
    # same scoring, so sharing it halves each one's part.
    shards = len(list(inputs["scores"].glob("*.parquet")))
    scoring_flops, scoring_seconds = shards * SCORING_COST[0], shards * SCORING_COST[1]
    selection = json.loads((inputs["manifest"] / "summary.json").read_text())["seconds"]
    offline = cells["offline"]
    assert offline["data"] == "offline selection (manifest)" and offline["own FLOPs"] == "4.000e+10"
    assert float(offline["inherited FLOPs"]) == pytest.approx(scoring_flops, rel=1e-3)
    assert float(offline["total FLOPs"]) == pytest.approx(4e10 + scoring_flops, rel=1e-3)
    assert float(offline["total seconds"]) == pytest.approx(40 + scoring_seconds + selection, rel=1e-3)
    assert float(offline["total FLOPs, upstream shared"]) == pytest.approx(4e10 + scoring_flops / 2, rel=1e-3)
    assert offline["zero-shot top-1"] == "0.6" and offline["text→image R@1"] == "0.2"
    online = cells["online"]
    assert online["data"] == "online JEST, ratio 0.5, learnability" and online["steps"] == "2"
    assert float(online["total FLOPs"]) == pytest.approx(float(online["own FLOPs"]) + scoring_flops, rel=1e-3)
    inherited = {(r[0], r[1]) for r in page_rows if len(r) == 4 and r[1].startswith(("scoring", "selection"))}
    root = inputs["root"].name
    assert inherited == {
        ("offline", f"scoring {root}/scores"),
        ("offline", f"selection {root}/manifest"),
        ("online", f"scoring {root}/scores"),
    }


def test_headline_gives_each_learner_its_top1_and_total_compute_against_the_baseline(inputs):
    runs = inputs["runs"]
    config = ReportConfig(runs=(str(runs / "baseline"), str(runs / "offline")), baseline="baseline")
    summary = report(config, str(inputs["root"] / "headline"))
    base, offline = summary.headline
    assert base.startswith("baseline  top-1 0.500") and "1.00× baseline's FLOPs" in base
    shards = len(list(inputs["scores"].glob("*.parquet")))
    ratio = (4e10 + shards * SCORING_COST[0]) / 4e10
    assert offline.startswith("offline   top-1 0.600 (+0.100)")
    assert f"{ratio:.2f}× baseline's FLOPs" in offline
    with pytest.raises(CurateError, match="--baseline nope: no run of that name"):
        report(ReportConfig(runs=(str(runs / "baseline"),), baseline="nope"), str(inputs["root"] / "x"))


def _page_shares(page_rows: list[list[str]], name: str) -> dict[str, float]:
    header = next(r for r in page_rows if r[0] == "selection")
    row = next(r for r in page_rows if r[0] == name)
    return {kind: float(value) for kind, value in zip(header[1:], row[1:], strict=True) if float(value)}


def test_noise_shares_join_what_was_selected_and_trained_on_with_the_shards(full, inputs):
    noise = _shard_table(inputs["shards"]).set_index("key")["noise"]
    page_rows = _rows((full / "index.html").read_text())
    selected = pq.read_table(inputs["manifest"] / "manifest.parquet").column("key").to_pylist()
    trained = {run: read_batches(inputs["runs"] / run).column("key").to_pylist() for run in
               ("baseline", "offline", "online")}  # fmt: skip
    assert len(trained["online"]) == 2 * 16  # b per step, chosen out of B = 32
    for name, keys in [("manifest: selected", selected)] + [
        (f"{r}: trained on", k) for r, k in trained.items()
    ]:
        expected = noise.loc[keys].value_counts(normalize=True)
        shares = _page_shares(page_rows, name)
        assert set(shares) == set(expected.index), name
        for kind, share in expected.items():
            assert shares[kind] == pytest.approx(share, abs=5e-4), (name, kind)
    assert sum(_page_shares(page_rows, "pool (scored)").values()) == pytest.approx(1.0, abs=1e-3)
    # The planted reference sees through the noise, and selecting by it shows.
    assert (
        _page_shares(page_rows, "manifest: selected")["none"]
        > _page_shares(page_rows, "pool (scored)")["none"]
    )


def test_each_run_is_joined_with_the_shards_it_trained_on(inputs, tmp_path):
    # The curated set reuses the crawl's keys (both start at 0000000) for other, clean pairs.
    curated = inputs["shards"].parent / "curated"
    keys = list(_shard_table(curated)["key"])
    assert (_shard_table(inputs["shards"]).set_index("key")["noise"].loc[keys] != "none").any()
    _planned_run(tmp_path / "clean", TrainConfig(DataConfig((str(curated),)), "", steps=40), keys, 0.1)
    runs = (str(tmp_path / "clean"), str(inputs["runs"] / "baseline"))
    report(ReportConfig(runs=runs, shards=str(inputs["shards"]), top=0), str(tmp_path / "out"))
    page_rows = _rows((tmp_path / "out" / "index.html").read_text())
    assert _page_shares(page_rows, "clean: trained on") == {"none": 1.0}


def test_contact_sheet_lists_extremes_with_captions(full, inputs):
    columns = ["key", "caption", "similarity", "status"]
    scores = pq.read_table(sorted(inputs["scores"].glob("*.parquet")), columns=columns).to_pandas()
    ok = scores[scores["status"] == "ok"].sort_values(["similarity", "key"], ascending=[False, True])
    page_rows = _rows((full / "index.html").read_text())
    tables = [i for i, r in enumerate(page_rows) if r[:2] == ["key", "reference similarity"]]
    assert len(tables) == 2
    highest, lowest = (page_rows[i + 1 : i + 7] for i in tables)
    assert [r[0] for r in highest] == list(ok["key"].head(6))
    assert [r[0] for r in lowest] == list(ok["key"].tail(6))[::-1]
    captions = dict(zip(ok["key"], ok["caption"], strict=True))
    assert all(r[-1] == captions[r[0]] for r in highest + lowest)
    assert float(highest[0][1]) == pytest.approx(ok["similarity"].iloc[0], abs=1e-3)


def test_selected_vs_rejected_uses_all_scored_samples(full):
    page = (full / "index.html").read_text()
    assert "reference similarity of the samples it selected" in page
    rows = {r[0]: r for r in _rows(page)}
    assert rows["manifest"][1:5] == ["jest", "easy", "0.5", rows["manifest"][4]]
    selected = pq.read_metadata(full.parent / "manifest" / "manifest.parquet").num_rows
    assert rows["manifest"][4] == str(selected)


def test_same_inputs_give_identical_files(full, inputs, tmp_path):
    report(_full_config(inputs), str(tmp_path))
    names = sorted(p.name for p in full.iterdir())
    assert names == sorted(p.name for p in tmp_path.iterdir())
    for name in names:
        assert (full / name).read_bytes() == (tmp_path / name).read_bytes(), name


# ------------------------------------------------------------------------------ filter ratio, accountings


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, small_synth) -> dict:
    """A reference run whose step-40 checkpoint scored the crawl; JEST and independent selections of those
    scores at F = 0.5 and 0.75 (real selects), a planned learner on each and one on all the data."""
    root = tmp_path_factory.mktemp("sweep")
    shards = Path(small_synth) / "web"
    every_key = list(_shard_table(shards)["key"])
    runs = root / "runs"
    all_data = TrainConfig(DataConfig((str(shards),)), "", batch_size=32, steps=40)
    _planned_run(runs / "reference", all_data, every_key, 0.3)
    _planned_run(runs / "uniform", all_data, every_key, 0.1)
    _planted_scores(shards, root / "scores", checkpoint=runs / "reference" / "checkpoints" / "step_40.pt")
    learners = {}
    for base, (method, ratio) in enumerate(itertools.product(("jest", "independent"), (0.5, 0.75))):
        name = f"{method}-{ratio}"
        config = SelectConfig(
            ratio=ratio, super_batch=100, chunks=4, method=method, criterion="easy", device="cpu"
        )
        select(str(root / "scores"), str(root / "manifests" / name), config)
        on_manifest = TrainConfig(DataConfig((str(shards),), str(root / "manifests" / name)), "", steps=40)
        _planned_run(runs / name, on_manifest, every_key, 0.01 * (base + 1))
        learners[name] = runs / name
    return {"root": root, "runs": runs, "learners": learners}


def test_top1_against_the_filter_ratio_per_selection_and_both_accountings(sweep):
    runs = sweep["runs"]
    names = ("reference", "uniform", *sweep["learners"])
    out = sweep["root"] / "out"
    summary = report(ReportConfig(runs=tuple(str(runs / n) for n in names)), str(out))
    assert "top1_vs_ratio.png" in summary.figures and "top1_vs_flops_accountings.png" in summary.figures
    page_rows = _rows((out / "index.html").read_text())
    header = next(r for r in page_rows if r[0] == "selection" and "F" in r)
    start = page_rows.index(header) + 1
    by_ratio = list(itertools.takewhile(lambda r: len(r) == len(header), page_rows[start:]))
    # Planned finals: base + 0.4, bases 0.01 to 0.04 in the order jest 0.5, jest 0.75, independent ...;
    # the all-data level is uniform alone: the reference is what the others inherit, not a learner.
    assert by_ratio == [
        ["jest (easy)", "0.5", "1", "0.41", "0"], ["jest (easy)", "0.75", "1", "0.42", "0"],
        ["independent (easy)", "0.5", "1", "0.43", "0"], ["independent (easy)", "0.75", "1", "0.44", "0"],
        ["all data, 40 steps (1 run)", "–", "–", "0.5", "–"],
    ]  # fmt: skip
    # The reference's training to its step 40 (4e10) is charged in the total, not with the reference given;
    # its scoring of every shard is charged in both.
    final = next(r for r in page_rows if r[0] == "run" and "data" in r)
    cells = dict(zip(final, next(r for r in page_rows if r[0] == "jest-0.5"), strict=True))
    scoring = len(list((sweep["root"] / "scores").glob("*.parquet"))) * SCORING_COST[0]
    assert float(cells["total FLOPs"]) == pytest.approx(4e10 + scoring + 4e10, rel=1e-3)
    assert float(cells["total FLOPs, reference given"]) == pytest.approx(4e10 + scoring, rel=1e-3)
    uniform = dict(zip(final, next(r for r in page_rows if r[0] == "uniform"), strict=True))
    assert uniform["total FLOPs, reference given"] == uniform["total FLOPs"] == "4.000e+10"
    page = (out / "index.html").read_text()
    assert "the reference given, as when one already has it" in page
    with Image.open(out / "top1_vs_flops_accountings.png") as image:
        assert image.width >= 800  # two panels


def test_one_filter_ratio_and_no_reference_draw_neither_view(sweep):
    uniform, jest = (read_run(sweep["runs"] / name) for name in ("uniform", "jest-0.5"))
    assert sections.ratio_points([uniform, jest]) is None  # one F
    assert sections.ratio_points([uniform, jest, read_run(sweep["runs"] / "jest-0.75")]) is not None
    assert sections.gives_reference([uniform, jest])  # jest-0.5's reference is given
    assert not sections.gives_reference([uniform])  # no reference to give


def test_runs_of_one_name_are_labelled_by_the_folders_that_tell_them_apart(tmp_path):
    runs = (tmp_path / "seed0/runs/jest", tmp_path / "seed0/ratio-0.5/runs/jest")
    for run in runs:  # a logged step and no evals: one figure to draw
        run.mkdir(parents=True)
        write_config(run, TrainConfig(DataConfig(("shards",)), str(run), steps=10), {})
        with MetricsWriter(run) as metrics:
            metrics.write({"step": 10, "loss": 1.5, "flops": 1e9, "seconds": 1.0})
    summary = report(ReportConfig(runs=tuple(map(str, runs)), top=0), str(tmp_path / "out"))
    assert [line.split()[0] for line in summary.headline] == ["seed0/runs/jest", "ratio-0.5/runs/jest"]
    with pytest.raises(CurateError, match="two inputs have the same label"):
        report(ReportConfig(runs=(str(runs[0]), str(runs[0]))), str(tmp_path / "twice"))


# ------------------------------------------------------------------------------------------ single folders


def _cli(*args: str):
    app = typer.Typer()
    app.command("report")(report_command)
    app.command("other", hidden=True)(lambda: None)  # with two commands, typer keeps the `report` name
    return CliRunner().invoke(app, ["report", *args])


def test_a_score_folder_alone(inputs, tmp_path):
    assert detect_kind(inputs["scores"]) == "scores"
    result = _cli(str(inputs["scores"]), "-o", str(tmp_path), "--shards", str(inputs["shards"]))
    assert result.exit_code == 0, result.output
    assert "wrote 5 figures for scores of 400 samples" in result.stdout
    page = (tmp_path / "index.html").read_text()
    assert "Training runs" not in page and "samples_highest.png" in page and "scores_similarity.png" in page
    assert (tmp_path / "noise_shares.png").is_file()


def test_a_manifest_folder_alone(inputs, tmp_path):
    # No summary inputs to fall back on: the manifest's own score is all there is to rank by.
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(inputs["manifest"] / "manifest.parquet", bare)
    assert detect_kind(bare) == "manifest"
    out = tmp_path / "out"
    runs, manifests, scores = classify([str(bare)])
    assert (runs, manifests, scores) == ([], [str(bare)], [])
    summary = report(ReportConfig(manifests=tuple(manifests), shards=str(inputs["shards"])), str(out))
    page = (out / "index.html").read_text()
    assert summary.manifests == 1 and summary.scored is None
    assert "selection_1_score.png" in page and "samples_highest.png" in page
    rows = pq.read_table(bare / "manifest.parquet").to_pandas()
    best = rows.sort_values(["score", "key"], ascending=[False, True]).iloc[0]
    assert f'<td>{best["key"]}</td><td class="num">{best["score"]:.4g}</td>' in page


def test_a_run_alone_without_evals(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    write_config(run, TrainConfig(DataConfig(("shards",)), str(run), steps=10), {})
    with MetricsWriter(run) as metrics:
        metrics.write({"step": 10, "loss": 1.5, "lr": 1e-3, "samples_per_s": 9.0, "logit_scale": 10.0,
                       "logit_bias": -10.0, "flops": 1e9})  # fmt: skip
    summary = report(ReportConfig(runs=classify([str(run)])[0]), str(tmp_path / "out"))
    assert summary.figures == ["training.png"]
    assert any("no eval records" in note for note in summary.notes)


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing", "no such file or folder"),
        (lambda d: (d / "junk").mkdir() or d / "junk", "is not a run"),
        (lambda d: (d / "m.jsonl").write_text("{}") and None or d / "m.jsonl", "give the folder"),
    ],
)
def test_bad_inputs_are_one_line_errors(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(CurateError, match=message) as error:
        classify([str(path)])
    assert "\n" not in str(error.value)


def test_a_score_folder_of_two_models_is_refused_as_every_stage_refuses_it(tmp_path):
    rng = np.random.default_rng(0)
    image = unit(rng.standard_normal((4, 8)))
    write_scores(tmp_path / "scores", "00000.tar", list("abcd"), image, image)
    write_scores(tmp_path / "scores", "00001.tar", list("efgh"), image, image, model="other")
    assert detect_kind(tmp_path / "scores") == "scores"
    with pytest.raises(CurateError, match="was scored by another model") as error:
        report(ReportConfig(scores=str(tmp_path / "scores")), str(tmp_path / "out"))
    assert "\n" not in str(error.value) and not (tmp_path / "out").exists()


def test_bad_options_are_one_line_errors(inputs, tmp_path):
    with pytest.raises(CurateError, match="nothing to report"):
        ReportConfig()
    bad = tmp_path / "bad_run"
    bad.mkdir()
    (bad / "metrics.jsonl").write_text('{"step": 1}\nnot json\n')
    with pytest.raises(CurateError, match=r"metrics.jsonl:2 is not a metrics record") as error:
        report(ReportConfig(runs=(str(bad),)), str(tmp_path / "out"))
    assert "\n" not in str(error.value)


def test_registered_command_prints_one_line_errors(tmp_path):
    result = run_cli("report", str(tmp_path / "missing"), "-o", str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "no such file or folder" in result.stderr


# ---------------------------------------------------------------------------------------------- browser


def test_page_renders_in_a_headless_browser(full, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not on PATH (apt-get install -y chromium)")
    shot = tmp_path / "shot.png"
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
        "--window-size=1200,2000", (full / "index.html").resolve().as_uri(),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), result.stderr[-2000:]
    with Image.open(shot) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert rgb.shape[:2] == (2000, 1200)
    assert rgb.std() > 10  # not a blank page
    # The eval curves are at the top: each run's line colour (tab10: blue, orange, green) must be on screen,
    # which only the rendered PNGs can put there (a broken image shows its alt text: none of these colours).
    for colour in ((31, 119, 180), (255, 127, 14), (44, 160, 44)):
        near = np.linalg.norm(rgb - np.array(colour, dtype=np.float32), axis=2) < 40
        assert near.mean() > 3e-4, f"no pixels of the colour {colour}: the plots did not render"


def test_images_in_page_are_relative(full):
    page = (full / "index.html").read_text()
    for src in re.findall(r'<img src="([^"]+)"', page):
        assert "/" not in src and Image.open(io.BytesIO((full / src).read_bytes())).format == "PNG"
