import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from builders import unit, write_scores
from conftest import run_cli

from curate.errors import CurateError
from curate.models import load_checkpoint
from curate.score import ScoreMetadata
from curate.train import TrainConfig, train

FAST = dict(model="siglip-tiny", batch_size=32, lr=2e-3, warmup=2, workers=0, cache="memory", log_every=1)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def shard_rows(folder: str) -> list[dict]:
    return pq.read_table(sorted(Path(folder).glob("*.parquet")), columns=["key", "noise"]).to_pylist()


def test_loss_falls_and_the_run_folder_is_complete(tmp_path, small_synth):
    run = tmp_path / "run"
    summary = train(TrainConfig(data=(f"{small_synth}/web",), out=str(run), steps=24, **FAST))
    assert summary.data_mode == "memory" and summary.data_samples == 396  # 4 corrupt images left out
    logged = [m for m in metrics(run) if "loss" in m]
    assert [m["step"] for m in logged] == list(range(1, 25))
    first, last = np.mean([m["loss"] for m in logged[:4]]), np.mean([m["loss"] for m in logged[-4:]])
    assert last < 0.75 * first  # 7.3 → 4.5 when written
    assert logged[1]["flops"] == 2 * logged[0]["flops"] > 3 * 32 * 50e6  # siglip-tiny: ~68 MFLOP a forward
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoints",
        "config.json",
        "latest.pt",
        "metrics.jsonl",
    ]
    checkpoint = torch.load(run / "latest.pt", weights_only=True)
    assert checkpoint["step"] == 24 and checkpoint["train_config"]["steps"] == 24
    assert json.loads((run / "config.json").read_text())["train"]["batch_size"] == 32


def test_periodic_eval_goes_into_the_metrics(tmp_path, small_synth):
    run = tmp_path / "run"
    summary = train(
        TrainConfig(
            data=(f"{small_synth}/web",),
            out=str(run),
            steps=4,
            eval=f"{small_synth}/eval",
            eval_every=2,
            **FAST,
        )
    )
    evals = [m for m in metrics(run) if "eval" in m]
    assert [m["step"] for m in evals] == [2, 4] and summary.evals == evals
    assert evals[-1]["eval"]["images"] == 128 and 0 <= evals[-1]["eval"]["zeroshot_top1"] <= 1


def test_a_killed_run_resumes_to_exactly_the_same_weights(tmp_path, small_synth):
    config = dict(data=(f"{small_synth}/web",), steps=6, save_every=3, **FAST)
    whole = tmp_path / "whole"
    train(TrainConfig(out=str(whole), **config))

    class Killed(Exception):
        pass

    def kill_at_step_5(done, total, status):
        if done == 5:
            raise Killed

    resumed = tmp_path / "resumed"
    with pytest.raises(Killed):
        train(TrainConfig(out=str(resumed), **config), progress=kill_at_step_5)
    assert load_checkpoint(resumed / "latest.pt")["step"] == 3
    with pytest.raises(CurateError, match="already holds a run"):
        train(TrainConfig(out=str(resumed), **config))
    with pytest.raises(CurateError, match="batch_size"):
        train(TrainConfig(out=str(resumed), resume=True, **{**config, "batch_size": 16}))
    summary = train(TrainConfig(out=str(resumed), resume=True, **config))
    assert summary.start_step == 3
    ours, theirs = load_checkpoint(whole / "latest.pt"), load_checkpoint(resumed / "latest.pt")
    for name, tensor in ours["state_dict"].items():
        assert torch.equal(tensor, theirs["state_dict"][name]), name
    assert [m["step"] for m in metrics(resumed)] == [1, 2, 3, 4, 5, 6]  # no line twice
    assert [m["loss"] for m in metrics(resumed)] == [m["loss"] for m in metrics(whole)]


def test_a_manifest_restricts_training_to_its_keys(tmp_path, small_synth):
    rows = [r for r in shard_rows(f"{small_synth}/web") if r["noise"] == "none"][:50]
    manifest = tmp_path / "manifest"
    manifest.mkdir()
    pq.write_table(
        pa.table({"key": [r["key"] for r in rows], "shard": ["?"] * len(rows)}), manifest / "manifest.parquet"
    )
    summary = train(
        TrainConfig(
            data=(f"{small_synth}/web",), out=str(tmp_path / "run"), steps=2, manifest=str(manifest), **FAST
        )
    )
    assert summary.data_samples == 50


def oracle_reference(small_synth: str, out: Path) -> None:
    """Scores of a reference that knows the noise: clean pairs get matching embeddings, noisy ones not."""
    rng = np.random.default_rng(0)
    dim = 64
    out.mkdir()
    for path in sorted(Path(small_synth, "web").glob("*.parquet")):
        rows = pq.read_table(path, columns=["key", "noise"]).to_pylist()
        image = rng.standard_normal((len(rows), dim)).astype(np.float32)
        text = np.where(
            np.array([r["noise"] == "none" for r in rows])[:, None], image, rng.standard_normal(image.shape)
        )
        keys = [r["key"] for r in rows]
        write_scores(
            out, path.stem + ".tar", keys, unit(image), unit(text), model="oracle", captions=[""] * len(keys)
        )
    assert ScoreMetadata.read(out / "00000.parquet").logit_scale == 10.0


def test_online_jest_prefers_clean_learnable_pairs(tmp_path, small_synth):
    reference = tmp_path / "reference"
    oracle_reference(small_synth, reference)
    run = tmp_path / "jest"
    config = TrainConfig(
        data=(f"{small_synth}/web",), out=str(run), steps=6, online_jest=True, ref=str(reference), ratio=0.75,
        chunks=4, criterion="learnability", **FAST,
    )  # fmt: skip
    summary = train(config)
    assert summary.samples == 6 * 32  # trained on b per step, out of B = 128 scored
    logged = [m for m in metrics(run) if "loss" in m]
    selected = np.mean([m["selected_learnability"] for m in logged])
    randomly = np.mean([m["random_learnability"] for m in logged])
    assert selected > randomly
    noisy_selected = np.mean([1 - m["noise_selected"].get("none", 0) for m in logged])
    noisy_seen = np.mean([1 - m["noise_seen"].get("none", 0) for m in logged])
    assert noisy_seen > 0.3 and noisy_selected < 0.5 * noisy_seen
    assert set(logged[0]["time_share"]) == {"score", "train"}


def test_command_line(tmp_path, small_synth):
    run = tmp_path / "run"
    args = [
        "train",
        f"{small_synth}/web",
        "-o",
        str(run),
        "--steps",
        "3",
        "--batch-size",
        "16",
        "--workers",
        "0",
    ]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "trained steps 0→3 on 396 samples in memory" in result.stdout and "latest.pt" in result.stdout
    scores = str(tmp_path / "scores")
    score = run_cli("score", f"{small_synth}/web/00000.tar", "-o", scores, "--model", str(run / "latest.pt"))
    assert score.returncode == 0, score.stderr
    evaluated = run_cli("eval", str(run / "latest.pt"), f"{small_synth}/eval", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert 0 <= json.loads(evaluated.stdout)["zeroshot_top1"] <= 1
    for extra, fragment in [
        ([], "already holds a run"),
        (["--online-jest"], "needs --ref"),
        (["--cache", "disk"], "--cache"),
    ]:
        again = run_cli(*args, *extra)
        assert again.returncode == 1 and again.stderr.count("\n") == 1 and fragment in again.stderr, (
            again.stderr
        )
