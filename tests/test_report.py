"""curate report: a page and PNGs from real scores, a manifest and fake-but-well-formed runs."""

from __future__ import annotations

import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from conftest import run_cli
from PIL import Image
from typer.testing import CliRunner

from curate.errors import CurateError
from curate.report import ReportConfig, detect_kind, report
from curate.report.page import format_number
from curate.score import ScoreConfig, score_shards
from curate.select.manifest import MANIFEST_SCHEMA
from curate.synth import SynthConfig, synthesize
from curate_cli.report import report_command

SCORING_FLOPS = 5e10


# ---------------------------------------------------------------------------------------------- inputs


def _write_run(folder: Path, train: dict, logs: list[dict], evals: list[dict]) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"train": train, "model_config": {"embed_dim": 128}}))
    lines = [json.dumps(r) for r in logs] + [json.dumps({"step": e["step"], "eval": e}) for e in evals]
    (folder / "metrics.jsonl").write_text(
        "\n".join(sorted(lines, key=lambda s: json.loads(s)["step"])) + "\n"
    )


def _eval(step: int, base: float) -> dict:
    top1 = round(base + 0.01 * step, 4)
    return {
        "step": step, "zeroshot_top1": top1, "zeroshot_top5": min(1.0, 3 * top1), "images": 64,
        "image_to_text_r1": top1 / 2, "image_to_text_r5": top1, "text_to_image_r1": top1 / 3,
        "text_to_image_r5": top1,
    }  # fmt: skip


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("report")
    synthesize(
        SynthConfig(n=200, seed=0, samples_per_shard=100, eval_per_class=1), str(root / "data"), workers=1
    )
    shards, scores = root / "data" / "web", root / "scores"
    score_shards(
        str(shards), str(scores), ScoreConfig(model="siglip-tiny", allow_random_init=True, workers=0)
    )

    # A manifest of every other ok sample, in two "super-batches", with a summary as curate select writes it.
    table = pq.read_table(sorted(scores.glob("*.parquet")), columns=["key", "shard", "similarity", "status"])
    ok = table.to_pandas().query("status == 'ok'").reset_index(drop=True)
    chosen = ok.iloc[::2].reset_index(drop=True)
    rows = pa.table(
        {
            "key": chosen["key"], "shard": chosen["shard"], "super_batch": np.arange(len(chosen)) // 50,
            "chunk": (np.arange(len(chosen)) % 4).astype(np.int32),
            "score": np.linspace(1.0, 0.0, len(chosen), dtype=np.float32),
        },
        schema=MANIFEST_SCHEMA,
    )  # fmt: skip
    manifest = root / "manifest"
    manifest.mkdir()
    pq.write_table(rows, manifest / "manifest.parquet")
    summary = {
        "command": "curate select scores -o manifest --ratio 0.5",
        "parameters": {"ratio": 0.5, "method": "jest", "criterion": "easy"},
        "inputs": {"scores": str(scores), "learner": None, "shards": str(shards)},
        "counts": {"eligible": len(ok), "selected": len(chosen)},
        "selected_score": -0.07, "random_score": -0.08,
        "super_batch_results": [
            {"super_batch": i, "size": 100, "selected": 50, "shards": 2, "selected_score": -0.07 + i / 100,
             "random_score": -0.08} for i in range(2)
        ],
    }  # fmt: skip
    (manifest / "summary.json").write_text(json.dumps(summary))

    runs = root / "runs"
    base = {"data": [str(shards)], "model": "siglip-tiny", "batch_size": 32, "steps": 40}
    logs = [{"step": s, "loss": 7.0 - s / 10, "lr": 1e-3, "samples_per_s": 100.0, "flops": 1e9 * s} for s in
            (10, 20, 30, 40)]  # fmt: skip
    _write_run(runs / "baseline", base | {"manifest": None}, logs, [_eval(s, 0.1) for s in (20, 40)])
    _write_run(runs / "offline", base | {"manifest": str(manifest)}, logs, [_eval(s, 0.2) for s in (20, 40)])
    online_logs = [
        r | {"flops": 2e9 * r["step"], "selected_learnability": 0.3, "random_learnability": 0.1,
             "noise_selected": {"none": 0.75, "misaligned": 0.25},
             "noise_seen": {"none": 0.6, "misaligned": 0.4}}
        for r in logs
    ]  # fmt: skip
    online = base | {"online_jest": True, "ratio": 0.5, "criterion": "learnability", "ref": str(scores)}
    _write_run(runs / "online", online, online_logs, [_eval(s, 0.3) for s in (20, 40)])
    return {"root": root, "shards": shards, "scores": scores, "manifest": manifest, "runs": runs}


def _full_config(inputs: dict) -> ReportConfig:
    runs = inputs["runs"]
    return ReportConfig(
        runs=(str(runs / "baseline"), str(runs / "offline"), str(runs / "online")),
        scores=str(inputs["scores"]),
        manifests=(str(inputs["manifest"]),),
        shards=str(inputs["shards"]),
        scoring_flops=(("offline", SCORING_FLOPS),),
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
    for name in ("eval_vs_step.png", "eval_vs_flops.png", "training.png", "selection_1_similarity.png",
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


def test_final_numbers_match_the_runs(full):
    rows = {r[0]: r for r in _rows((full / "index.html").read_text())}
    header = next(r for r in _rows((full / "index.html").read_text()) if r[0] == "run")
    column = {name: i for i, name in enumerate(header)}
    for run, base, flops in (("baseline", 0.1, 4e10), ("offline", 0.2, 4e10), ("online", 0.3, 8e10)):
        row = rows[run]
        assert row[column["steps"]] == "40"
        assert row[column["final loss"]] == format_number(7.0 - 4.0)
        assert row[column["zero-shot top-1"]] == format_number(_eval(40, base)["zeroshot_top1"])
        assert row[column["text→image R@1"]] == format_number(_eval(40, base)["text_to_image_r1"])
        assert row[column["training FLOPs"]] == format_number(flops)
    assert rows["offline"][column["FLOPs incl. offline scoring"]] == format_number(4e10 + SCORING_FLOPS)
    assert rows["baseline"][column["FLOPs incl. offline scoring"]] == format_number(4e10)
    assert rows["offline"][column["data"]] == "offline selection (manifest)"
    assert rows["online"][column["data"]].startswith("online JEST")


def test_noise_shares_match_the_shards(full, inputs):
    noise = pq.read_table(sorted(inputs["shards"].glob("*.parquet")), columns=["key", "noise"]).to_pandas()
    noise = noise.set_index("key")["noise"]
    selected = pq.read_table(inputs["manifest"] / "manifest.parquet").column("key").to_pylist()
    expected = noise.loc[selected].value_counts(normalize=True)
    page_rows = _rows((full / "index.html").read_text())
    header = next(r for r in page_rows if r[0] == "selection")
    row = next(r for r in page_rows if r[0] == "manifest: selected")
    shares = {kind: float(value) for kind, value in zip(header[1:], row[1:], strict=True)}
    assert set(k for k, v in shares.items() if v > 0) == set(expected.index)
    for kind, share in expected.items():
        assert shares[kind] == pytest.approx(share, abs=5e-4)
    online = next(r for r in page_rows if r[0] == "online: online JEST selected")
    assert float(online[header.index("misaligned")]) == pytest.approx(0.25)
    pool = next(r for r in page_rows if r[0] == "pool (scored)")
    assert sum(float(v) for v in pool[1:]) == pytest.approx(1.0, abs=1e-3)


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
    assert "wrote 5 figures for scores of 200 samples" in result.stdout
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
    summary = report(ReportConfig.from_inputs([str(bare)], shards=str(inputs["shards"])), str(out))
    page = (out / "index.html").read_text()
    assert summary.manifests == 1 and summary.scored is None
    assert "selection_1_score.png" in page and "samples_highest.png" in page
    first = pq.read_table(bare / "manifest.parquet").slice(0, 1).to_pylist()[0]  # score 1.0: the highest
    assert f"<td>{first['key']}</td>" in page


def test_a_run_alone_without_evals(tmp_path):
    _write_run(tmp_path / "r", {"steps": 10}, [{"step": 10, "loss": 1.5, "flops": 1e9}], [])
    summary = report(ReportConfig.from_inputs([str(tmp_path / "r")]), str(tmp_path / "out"))
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
        ReportConfig.from_inputs([str(path)])
    assert "\n" not in str(error.value)


def test_bad_options_are_one_line_errors(inputs, tmp_path):
    with pytest.raises(CurateError, match="nothing to report"):
        ReportConfig()
    config = ReportConfig(runs=(str(inputs["runs"] / "baseline"),), scoring_flops=(("nope", 1.0),))
    with pytest.raises(CurateError, match="no run named nope"):
        report(config, str(tmp_path))
    bad = tmp_path / "bad_run"
    bad.mkdir()
    (bad / "metrics.jsonl").write_text('{"step": 1}\nnot json\n')
    with pytest.raises(CurateError, match=r"metrics.jsonl:2 is not a metrics record") as error:
        report(ReportConfig(runs=(str(bad),)), str(tmp_path / "out"))
    assert "\n" not in str(error.value)
    result = _cli(str(inputs["runs"] / "baseline"), "-o", str(tmp_path), "--scoring-flops", "baseline")
    assert isinstance(result.exception, CurateError) and "RUN=FLOPS" in str(result.exception)


def test_registered_command_prints_one_line_errors(tmp_path):
    from curate_cli.main import app

    if "report" not in {c.name for c in app.registered_commands}:
        pytest.skip("`report` is not registered in cli/main.py yet")
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
