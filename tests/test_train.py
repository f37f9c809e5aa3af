import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from builders import unit, write_manifest_rows, write_scores
from conftest import run_cli

from curate.errors import CurateError
from curate.models import load_checkpoint
from curate.score import ScoreMetadata
from curate.shards.batches import ShardBatches
from curate.train import DataConfig, OnlineJestConfig, OptimConfig, TrainConfig, train
from curate.train.config import trajectory_changes
from curate.train.run import (
    BATCHES_FILE,
    METRICS_FILE,
    read_batches,
    read_config,
    read_metrics,
    truncate_metrics,
)

OPTIM = OptimConfig(lr=2e-3, warmup=2)


def fast(data: str, out: Path, manifest: str | None = None, **settings) -> TrainConfig:
    """A tiny in-memory run: siglip-tiny, b = 32, a log line every step."""
    settings = {"model": "siglip-tiny", "batch_size": 32, "optim": OPTIM, "log_every": 1, **settings}
    return TrainConfig(DataConfig((data,), manifest, cache="memory", workers=0), str(out), **settings)


def logs(run: Path) -> list[dict]:
    return [m for m in read_metrics(run) if "loss" in m]


def shard_noise(folder: str) -> dict[str, str]:
    """key -> noise kind, from the synthetic shards' own tables."""
    table = pq.read_table(sorted(Path(folder).glob("*.parquet")), columns=["key", "noise"])
    return dict(zip(table["key"].to_pylist(), table["noise"].to_pylist(), strict=True))


def test_loss_falls_and_the_run_folder_is_complete(tmp_path, small_synth):
    run = tmp_path / "run"
    summary = train(fast(f"{small_synth}/web", run, steps=24))
    assert summary.data_mode == "memory" and summary.data_samples == 396  # 4 corrupt images left out
    logged = logs(run)
    assert [m["step"] for m in logged] == list(range(1, 25))
    first, last = np.mean([m["loss"] for m in logged[:4]]), np.mean([m["loss"] for m in logged[-4:]])
    assert last < 0.75 * first  # 7.3 → 4.5 when written
    assert logged[1]["flops"] == 2 * logged[0]["flops"] > 3 * 32 * 50e6  # siglip-tiny: ~68 MFLOP a forward
    seconds = [m["seconds"] for m in logged]  # the run's wall time, counted from before the model loaded
    assert seconds[0] > 0 and all(a < b for a, b in zip(seconds, seconds[1:], strict=False))
    assert sorted(p.name for p in run.iterdir()) == [
        "batches.parquet",
        "checkpoints",
        "config.json",
        "latest.pt",
        "metrics.jsonl",
    ]
    checkpoint = torch.load(run / "latest.pt", weights_only=True)
    assert checkpoint["step"] == 24 and checkpoint["train_config"]["steps"] == 24
    assert checkpoint["scaler"] == {}  # fp32: no loss scaling
    assert read_config(run) == fast(f"{small_synth}/web", run, steps=24)
    # Every step trained on b keys of the data; over 24 x 32 = 768 draws from 396 samples, each epoch
    # (a fresh permutation) uses every sample once.
    batches = read_batches(run).to_pydict()
    assert batches["step"] == [step for step in range(24) for _ in range(32)]
    assert set(batches["key"]) <= set(shard_noise(f"{small_synth}/web"))
    assert len(set(batches["key"][:396])) == 396


def test_periodic_eval_goes_into_the_metrics(tmp_path, small_synth):
    run = tmp_path / "run"
    config = fast(f"{small_synth}/web", run, steps=4, eval=f"{small_synth}/eval", eval_every=2)
    summary = train(config)
    evals = [m for m in read_metrics(run) if "eval" in m]
    assert [m["step"] for m in evals] == [2, 4] and summary.evals == evals
    assert evals[-1]["eval"]["images"] == 128 and 0 <= evals[-1]["eval"]["zeroshot_top1"] <= 1


class Killed(Exception):
    pass


def kill_at(step: int):
    def progress(done, total, status):
        if done == step:
            raise Killed

    return progress


def assert_same_run(whole: Path, resumed: Path) -> None:
    ours, theirs = load_checkpoint(whole / "latest.pt"), load_checkpoint(resumed / "latest.pt")
    for name, tensor in ours["state_dict"].items():
        assert torch.equal(tensor, theirs["state_dict"][name]), name
    assert [m["step"] for m in read_metrics(resumed)] == [
        m["step"] for m in read_metrics(whole)
    ]  # none twice
    assert [m["loss"] for m in logs(resumed)] == [m["loss"] for m in logs(whole)]
    assert read_batches(resumed).equals(read_batches(whole))


def test_a_killed_run_resumes_exactly_even_from_a_torn_metrics_line(tmp_path, small_synth):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    config = fast(f"{small_synth}/web", resumed, steps=6, save_every=3)
    train(replace(config, out=str(whole)))

    with pytest.raises(Killed):
        train(config, progress=kill_at(5))
    assert load_checkpoint(resumed / "latest.pt")["step"] == 3
    assert read_batches(resumed)["step"].to_pylist() == [s for s in range(3) for _ in range(32)]
    # Killed while writing the next line (B7): it was a JSONDecodeError traceback on --resume.
    with open(resumed / METRICS_FILE, "a") as handle:
        handle.write('{"step": 6, "loss": 4.')
    with pytest.raises(CurateError, match="already holds a run"):
        train(config)
    with pytest.raises(CurateError, match=r"\(batch_size\): not the same run"):
        train(replace(config, resume=True, batch_size=16))
    with pytest.raises(CurateError, match=r"\(optim.lr\): not the same run"):
        train(replace(config, resume=True, optim=replace(OPTIM, lr=1e-3)))
    # The run's seconds go on from the checkpoint's: plant a large count there to see it carried.
    payload = torch.load(resumed / "latest.pt", weights_only=True)
    torch.save({**payload, "seconds": 1e6}, resumed / "latest.pt")
    started = time.perf_counter()
    summary = train(replace(config, resume=True, log_every=2))  # logging is not part of the trajectory
    elapsed = time.perf_counter() - started
    assert all(1e6 < m["seconds"] < 1e6 + elapsed for m in logs(resumed)[3:])
    assert summary.start_step == 3
    text = (resumed / METRICS_FILE).read_text()
    assert text.endswith("\n") and [json.loads(line)["step"] for line in text.splitlines()] == [1, 2, 3, 4, 6]
    ours, theirs = load_checkpoint(whole / "latest.pt"), load_checkpoint(resumed / "latest.pt")
    for name, tensor in ours["state_dict"].items():
        assert torch.equal(tensor, theirs["state_dict"][name]), name
    assert [m["loss"] for m in logs(resumed)][:4] == [m["loss"] for m in logs(whole)][:4]
    assert read_batches(resumed).equals(read_batches(whole))


def test_a_run_killed_before_its_first_checkpoint_starts_over_cleanly(tmp_path, small_synth):
    config = fast(f"{small_synth}/web", tmp_path / "run", steps=4)
    with pytest.raises(Killed):
        train(config, progress=kill_at(2))
    assert [m["step"] for m in read_metrics(tmp_path / "run")] == [1, 2]  # logged, never checkpointed
    train(config)  # no --resume: nothing to resume from, and the old log is not kept
    assert [m["step"] for m in read_metrics(tmp_path / "run")] == [1, 2, 3, 4]


def test_fp16_scales_the_loss_and_resumes_exactly(tmp_path, small_synth):
    """B1: fp16 autocast without a GradScaler lets small gradients underflow to zero. The scaler's state
    (its scale backs off after overflowing steps) must be in the checkpoint, or resume diverges."""
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    # fp16 autocast on a CPU is emulated (3x slower than fp32 here): b = 8, three steps.
    config = fast(f"{small_synth}/web", resumed, steps=3, save_every=1, batch_size=8, precision="fp16")
    train(replace(config, out=str(whole)))
    with pytest.raises(Killed):
        train(config, progress=kill_at(2))
    scaler = load_checkpoint(resumed / "latest.pt")["scaler"]
    assert scaler["scale"] < 2.0**16  # the default initial scale: it backed off, so it is live
    train(replace(config, resume=True))
    assert_same_run(whole, resumed)
    assert all(math.isfinite(m["loss"]) for m in logs(whole))


def test_read_metrics_drops_a_torn_last_line_only(tmp_path):
    path = tmp_path / METRICS_FILE
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 2.0}]
    truncate_metrics(tmp_path, 5)
    assert path.read_text() == '{"step": 1, "loss": 2.0}\n'
    path.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(CurateError, match=r"metrics.jsonl:2 is not a metrics record"):
        read_metrics(tmp_path)


def decodable(folder: str) -> dict[str, str]:
    """key -> shard of every sample whose image decodes, by the trainer's own decoder."""
    paths = sorted(str(p) for p in Path(folder).glob("*.tar"))
    batches = ShardBatches(
        paths, lambda image: torch.zeros(1), lambda captions: torch.zeros(len(captions)), 64
    )
    return {k: b.shard for b in batches for k, st in zip(b.keys, b.status, strict=True) if st == "ok"}


def planted_batches(small_synth: str, folder: Path, batches: int, size: int) -> list[list[str]]:
    """A manifest of `batches` batches of `size` from every shard, one key repeated in two batches and one
    undecodable sample in batch 1 (trained without). Returns each batch's decodable keys."""
    samples = decodable(f"{small_synth}/web")
    every = shard_noise(f"{small_synth}/web")
    broken = sorted(set(every) - set(samples))[0]
    keys = list(np.random.default_rng(0).permutation(sorted(samples)))[: batches * size]
    plan = [keys[b * size : (b + 1) * size] for b in range(batches)]
    plan[2][0] = plan[0][3]  # drawn again by a later pass
    plan[1][5] = broken
    rows = [k for batch in plan for k in batch]
    shards = [samples.get(k, "00000.tar") if k != broken else broken_shard(small_synth, broken) for k in rows]
    write_manifest_rows(folder, rows, shards, [b for b in range(batches) for _ in range(size)])
    return [[k for k in batch if k != broken] for batch in plan]


def broken_shard(small_synth: str, key: str) -> str:
    for path in sorted(Path(small_synth, "web").glob("*.parquet")):
        if key in pq.read_table(path, columns=["key"])["key"].to_pylist():
            return path.stem + ".tar"
    raise AssertionError(key)


def test_a_manifest_trains_its_batches_in_order_from_memory_or_a_stream_resumed_or_not(
    tmp_path, small_synth, monkeypatch
):
    monkeypatch.setattr("curate.train.data.LOOKAHEAD_BATCHES", 2)  # several look-ahead groups in 7 steps
    plan = planted_batches(small_synth, tmp_path / "manifest", batches=5, size=8)
    warnings = []
    memory = fast(f"{small_synth}/web", tmp_path / "memory", str(tmp_path / "manifest"), steps=7)
    memory = replace(memory, batch_size=None)  # the manifest's: 8
    summary = train(memory, warn=warnings.append)
    assert summary.missing_from_manifest == 1 and summary.manifest_batches == 5
    assert len(warnings) == 1 and "holds 5 batches for 7 steps" in warnings[0]
    trained = read_batches(tmp_path / "memory").to_pandas().groupby("step")["key"].apply(list)
    assert [trained[t] for t in range(5)] == plan  # step t trains exactly batch t, in draw order
    assert {tuple(trained[5]), tuple(trained[6])} < {tuple(b) for b in plan}  # then a seeded order
    assert [m.get("epoch") for m in logs(tmp_path / "memory")] == [0] * 5 + [1] * 2
    assert json.loads((tmp_path / "memory" / "config.json").read_text())["train"]["batch_size"] == 8

    stream = replace(memory, data=replace(memory.data, cache="stream", workers=2), save_every=3)
    whole = replace(stream, out=str(tmp_path / "stream"))
    assert train(whole).data_mode == "stream"
    assert read_batches(tmp_path / "stream").equals(read_batches(tmp_path / "memory"))
    resumed = replace(stream, out=str(tmp_path / "resumed"))
    with pytest.raises(Killed):
        train(resumed, progress=kill_at(5))
    train(replace(resumed, resume=True))
    assert_same_run(tmp_path / "stream", tmp_path / "resumed")
    resumed_memory = replace(memory, out=str(tmp_path / "resumed-memory"), save_every=3)
    with pytest.raises(Killed):
        train(resumed_memory, progress=kill_at(4))
    train(replace(resumed_memory, resume=True))
    assert_same_run(tmp_path / "memory", tmp_path / "resumed-memory")

    with pytest.raises(CurateError, match="--batch-size 16: the manifest's batches hold 8"):
        train(replace(memory, out=str(tmp_path / "b16"), batch_size=16))


def test_a_manifest_shuffled_restricts_training_to_its_keys(tmp_path, small_synth):
    clean = [key for key, noise in shard_noise(f"{small_synth}/web").items() if noise == "none"][:50]
    manifest = write_manifest_rows(tmp_path / "manifest", clean)
    run = tmp_path / "run"
    config = fast(f"{small_synth}/web", run, str(manifest), steps=2)
    config = replace(config, data=replace(config.data, order="shuffle"))
    summary = train(config)
    assert summary.data_samples == 50
    assert set(read_batches(run)["key"].to_pylist()) <= set(clean)


def test_a_manifest_that_is_not_one_is_a_one_line_error(tmp_path, small_synth):
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "manifest.parquet").write_bytes(b"PAR1 not parquet")
    pq.write_table(pa.table({"key": [1]}), tmp_path / "ints.parquet")
    for manifest, message in [
        (tmp_path / "torn", "cannot read manifest"),
        (tmp_path / "ints.parquet", "is not a curate manifest"),
        (tmp_path / "missing", "no manifest at"),
    ]:
        config = fast(f"{small_synth}/web", tmp_path / f"run-{manifest.name}", str(manifest), steps=1)
        with pytest.raises(CurateError, match=message) as error:
            train(config)
        assert "\n" not in str(error.value)


def oracle_reference(small_synth: str, out: Path, lacking: int = 0) -> set[str]:
    """Scores of a reference that knows the noise: clean pairs get matching embeddings, noisy ones not.
    With `lacking`, that many clean samples of each shard get no usable row (one absent, one not ok, one
    with a NaN embedding, in turn); returns their keys."""
    rng = np.random.default_rng(0)
    dim = 64
    out.mkdir()
    without = set()
    for path in sorted(Path(small_synth, "web").glob("*.parquet")):
        rows = pq.read_table(path, columns=["key", "noise"]).to_pylist()
        image = rng.standard_normal((len(rows), dim)).astype(np.float32)
        text = np.where(
            np.array([r["noise"] == "none" for r in rows])[:, None], image, rng.standard_normal(image.shape)
        )
        image, text = unit(image), unit(text)
        keys, status = [r["key"] for r in rows], ["ok"] * len(rows)
        clean = [i for i, r in enumerate(rows) if r["noise"] == "none"][:lacking]
        for number, i in enumerate(clean):
            without.add(keys[i])
            if number % 3 == 1:
                status[i] = "undecodable_image"
            elif number % 3 == 2:
                image[i, 0] = np.nan
        kept = [i for i in range(len(rows)) if not (clean and i == clean[0])]  # the first: no row at all
        write_scores(
            out,
            path.stem + ".tar",
            [keys[i] for i in kept],
            image[kept],
            text[kept],
            status=[status[i] for i in kept],
            model="oracle",
            captions=[""] * len(kept),
        )
    assert ScoreMetadata.read(out / "00000.parquet").logit_scale == 10.0
    return without


def test_online_jest_prefers_clean_learnable_pairs(tmp_path, small_synth):
    reference = tmp_path / "reference"
    oracle_reference(small_synth, reference)
    run = tmp_path / "jest"
    online = OnlineJestConfig(ref=str(reference), ratio=0.75, chunks=4, criterion="learnability")
    summary = train(fast(f"{small_synth}/web", run, steps=6, online=online))
    assert summary.samples == 6 * 32  # trained on b per step, out of B = 128 scored
    logged = logs(run)
    selected = np.mean([m["selected_learnability"] for m in logged])
    randomly = np.mean([m["random_learnability"] for m in logged])
    assert selected > randomly
    assert set(logged[0]["time_share"]) == {"score", "train"}
    # What it trained on, joined with the shards' own noise labels: far cleaner than the pool.
    noise = shard_noise(f"{small_synth}/web")
    trained = read_batches(run).to_pydict()
    assert trained["step"] == [step for step in range(6) for _ in range(32)]
    noisy_trained = np.mean([noise[key] != "none" for key in trained["key"]])
    noisy_pool = np.mean([kind != "none" for kind in noise.values()])
    assert noisy_pool > 0.3 and noisy_trained < 0.5 * noisy_pool


def test_online_jest_false_negative_mask_at_one_changes_nothing_and_below_it_changes_the_batches(
    tmp_path, small_synth
):
    reference = tmp_path / "reference"
    oracle_reference(small_synth, reference)
    trained = {}
    for name, spec in (("plain", None), ("one", "mask:1"), ("masked", "mask:0.3")):
        online = OnlineJestConfig(ref=str(reference), ratio=0.75, chunks=4, false_negatives=spec)
        train(fast(f"{small_synth}/web", tmp_path / name, steps=3, online=online))
        trained[name] = read_batches(tmp_path / name)["key"].to_pylist()
    assert trained["one"] == trained["plain"] and trained["masked"] != trained["plain"]
    logged = {name: [m for m in read_metrics(tmp_path / name) if "loss" in m] for name in trained}
    assert len(logged["masked"]) > 0 and all(
        0 <= m["selected_masked_share"] <= 1 and 0 < m["random_masked_share"] < 1 for m in logged["masked"]
    )
    assert not any("selected_masked_share" in m for m in logged["plain"] + logged["one"])
    with pytest.raises(CurateError, match="mask:T"):
        OnlineJestConfig(ref=str(reference), false_negatives="mask:high")


def test_online_jest_skips_and_counts_samples_without_a_usable_reference_row(tmp_path, small_synth):
    reference = tmp_path / "reference"
    lacking = oracle_reference(small_synth, reference, lacking=3)
    assert len(lacking) == 12  # 3 of each of 4 shards: absent, not ok, NaN
    online = OnlineJestConfig(ref=str(reference), ratio=0.75, chunks=4)
    summary = train(fast(f"{small_synth}/web", tmp_path / "run", steps=2, online=online))
    assert summary.skipped["no_reference_score"] == 12 and summary.data_samples == 396 - 12
    assert not set(read_batches(tmp_path / "run")["key"].to_pylist()) & lacking


@pytest.mark.parametrize("cache", ["memory", "stream"])
def test_online_jest_with_a_manifest_draws_only_its_keys(tmp_path, small_synth, cache):
    """--manifest with --online-jest trains its keys as a set (--order shuffle): JEST picks from them."""
    reference = tmp_path / "reference"
    lacking = oracle_reference(small_synth, reference, lacking=3)
    keys = sorted(shard_noise(f"{small_synth}/web"))[::2]  # every other key, some of them without a row
    manifest = write_manifest_rows(tmp_path / "manifest", keys)
    online = OnlineJestConfig(ref=str(reference), ratio=0.75, chunks=4)
    config = fast(f"{small_synth}/web", tmp_path / "run", str(manifest), steps=2, online=online)
    config = replace(config, data=replace(config.data, cache=cache, workers=2, shuffle_buffer=64))
    summary = train(config)
    assert config.data.order == "shuffle" and summary.manifest_keys == 200
    trained = set(read_batches(tmp_path / "run")["key"].to_pylist())
    assert len(trained) > 32 and trained <= set(keys) - lacking


def test_online_jest_streams_each_samples_reference_and_resumes_exactly(tmp_path, small_synth):
    """No process loads the whole reference: each worker reads the score file of the shard it decodes and
    the embeddings travel with the samples. Killed after a checkpoint, the stream resumes exactly."""
    reference = tmp_path / "reference"
    lacking = oracle_reference(small_synth, reference, lacking=3)
    online = OnlineJestConfig(ref=str(reference), ratio=0.75, chunks=4)
    config = fast(f"{small_synth}/web", tmp_path / "resumed", steps=5, save_every=2, online=online)
    config = replace(config, data=replace(config.data, cache="stream", workers=2, shuffle_buffer=64))
    whole = tmp_path / "whole"
    summary = train(replace(config, out=str(whole)))
    assert summary.data_mode == "stream" and summary.samples == 5 * 32
    trained = read_batches(whole).to_pydict()
    assert trained["step"] == [step for step in range(5) for _ in range(32)]
    assert not set(trained["key"]) & lacking and all(math.isfinite(m["loss"]) for m in logs(whole))
    with pytest.raises(Killed):
        train(config, progress=kill_at(3))
    assert load_checkpoint(tmp_path / "resumed" / "latest.pt")["step"] == 2
    train(replace(config, resume=True))
    assert_same_run(whole, tmp_path / "resumed")


def test_a_stream_logs_the_samples_of_each_shard_without_a_reference_row(tmp_path, small_synth, caplog):
    """A stream's workers cannot report back to the summary: each shard's skipped count is a log line."""
    reference = tmp_path / "reference"
    oracle_reference(small_synth, reference, lacking=3)
    online = OnlineJestConfig(ref=str(reference), ratio=0.75, chunks=4)
    config = fast(f"{small_synth}/web", tmp_path / "run", steps=1, online=online, batch_size=16)
    config = replace(config, data=replace(config.data, cache="stream", workers=0, shuffle_buffer=400))
    with caplog.at_level("WARNING", logger="curate.train.stream"):
        train(config)  # a 400-sample buffer: every shard is read before the first batch
    lines = sorted(r.getMessage() for r in caplog.records if "no reference score" in r.getMessage())
    assert [line.split(" samples of ")[0] for line in lines] == ["3"] * 4
    assert [Path(line.split(" of ")[1].split(" have")[0]).name for line in lines] == [
        f"0000{i}.tar" for i in range(4)
    ]


def test_a_uniform_stream_resumes_exactly_from_the_step_it_stopped_at(tmp_path, small_synth):
    config = fast(f"{small_synth}/web", tmp_path / "resumed", steps=4, save_every=1, batch_size=16)
    config = replace(config, data=replace(config.data, cache="stream", workers=0, shuffle_buffer=50))
    train(replace(config, out=str(tmp_path / "whole")))
    with pytest.raises(Killed):
        train(config, progress=kill_at(4))
    assert load_checkpoint(tmp_path / "resumed" / "latest.pt")["step"] == 3
    train(replace(config, resume=True))
    assert_same_run(tmp_path / "whole", tmp_path / "resumed")


def test_a_manifest_whose_batch_ids_have_gaps_trains_them_in_id_order(tmp_path):
    """A manifest written in parts numbers its batches local_batch * P + part: steps follow the ids' rank."""
    from curate.select.manifest import MANIFEST_SCHEMA
    from curate.train.data import load_plan

    ids = [7, 0, 3, 7, 0, 12, 3]
    n = len(ids)
    table = pa.table(
        {
            "key": [f"k{i}" for i in range(n)],
            "shard": ["00000.tar"] * n,
            "batch": pa.array(ids, pa.int64()),
            "super_batch": pa.array(ids, pa.int64()),
            "chunk": pa.array([0] * n, pa.int32()),
            "score": pa.array([0.0] * n, pa.float32()),
            "sha256": pa.nulls(n, pa.string()),
        },
        schema=MANIFEST_SCHEMA,
    )
    (tmp_path / "manifest").mkdir()
    pq.write_table(table, tmp_path / "manifest" / "manifest.parquet")
    plan = load_plan(str(tmp_path / "manifest"), seed=0)
    assert len(plan) == 4 and plan.batch_size == 2
    assert [plan.keys_of(plan.locate(step)[0]) for step in range(4)] == [
        ["k1", "k4"],
        ["k2", "k6"],
        ["k0", "k3"],
        ["k5"],
    ]


def test_the_config_refuses_bad_numbers_in_one_line(tmp_path):
    data = DataConfig(("shards",))
    for make, option in [
        (lambda: OptimConfig(lr=float("nan")), "--lr"),
        (lambda: OptimConfig(lr=-1.0), "--lr"),
        (lambda: OptimConfig(grad_clip=float("nan")), "--grad-clip"),
        (lambda: OptimConfig(grad_clip=float("inf")), "--grad-clip"),
        (lambda: OptimConfig(wd=float("inf")), "--wd"),
        (lambda: OptimConfig(beta2=1.0), "--beta2"),
        (lambda: TrainConfig(data, "run", seed=-1), "--seed"),
        (lambda: TrainConfig(data, "run", steps=0), "--steps"),
        (lambda: TrainConfig(data, "run", precision="fp8"), "--precision"),
        (lambda: DataConfig(("shards",), cache="disk"), "--cache"),
        (lambda: OnlineJestConfig(), "needs --ref"),
        (lambda: OnlineJestConfig(ref="s", criterion="hardest"), "--criterion"),
        (lambda: OnlineJestConfig(ref="s", ratio=float("nan")), "--ratio"),
        (lambda: OnlineJestConfig(ref="s", temperature=float("inf")), "--temperature"),
        (lambda: TrainConfig(data, "run", batch_size=4, online=OnlineJestConfig(ref="s")), "chunks=16"),
    ]:
        with pytest.raises(CurateError, match=option) as error:
            make()
        assert "\n" not in str(error.value)


def test_the_resume_check_covers_every_trajectory_setting():
    base = TrainConfig(DataConfig(("a",)), "run")
    online = replace(base, online=OnlineJestConfig(ref="scores"))
    assert trajectory_changes(base, base) == []
    assert trajectory_changes(base, replace(base, eval_every=0, device="cpu", out="elsewhere")) == []
    assert trajectory_changes(base, online) == ["online"]
    assert trajectory_changes(online, replace(online, online=OnlineJestConfig(ref="scores", chunks=8))) == [
        "online.chunks"
    ]
    assert trajectory_changes(base, replace(base, data=DataConfig(("a",), cache="stream"))) == ["data.cache"]
    assert trajectory_changes(base, replace(base, steps=2000)) == ["steps"]  # the cosine schedule ends there
    assert TrainConfig.from_dict(online.as_dict()) == online
    with pytest.raises(CurateError, match="unknown settings lr"):
        TrainConfig.from_dict({**base.as_dict(), "lr": 1e-3})  # a flat config of an older version


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
    assert read_batches(run).num_rows == 3 * 16 and (run / BATCHES_FILE).is_file()
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
        (["--lr", "nan"], "--lr"),
        (["--grad-clip", "inf"], "--grad-clip"),
        (["--seed", "-1"], "--seed"),
        (["--online-jest", "--ref", scores, "--criterion", "hardest"], "--criterion"),
    ]:
        failed = run_cli(*args, *extra)
        assert failed.returncode == 1, failed.stderr
        assert failed.stderr.count("\n") == 1 and fragment in failed.stderr, failed.stderr


# ---------------------------------------------------------------------------------- Flexi-JEST (issue 14)
# siglip-tiny is a 32 px ViT with patch 4: R = 16 is a quarter of its image tokens.


class EncodeLog:
    """Every image encoding of the model, as (in evaluation, resolution, images, with gradient)."""

    def __init__(self, monkeypatch):
        import curate.evaluate
        from curate.models import ImageTextModel

        self.calls: list[tuple[bool, int | None, int, bool]] = []
        self._evaluating = False
        encode_images, evaluate = ImageTextModel.encode_images, curate.evaluate.evaluate

        def recording(model, images, resolution=None):
            self.calls.append((self._evaluating, resolution, len(images), torch.is_grad_enabled()))
            return encode_images(model, images, resolution)

        def evaluating(*args, **kwargs):
            self._evaluating = True
            try:
                return evaluate(*args, **kwargs)
            finally:
                self._evaluating = False

        monkeypatch.setattr(ImageTextModel, "encode_images", recording)
        monkeypatch.setattr(curate.evaluate, "evaluate", evaluating)  # the trainer imports it when it runs

    def training(self) -> list[tuple[int | None, int, bool]]:
        """(resolution, images, with gradient) of the steps' encodings, less forward_flops' (of 2)."""
        return [call[1:] for call in self.calls if not call[0] and call[2] > 2]

    def evaluation(self) -> set[int | None]:
        return {resolution for evaluating, resolution, _, _ in self.calls if evaluating}


def tiny_flops(resolution: int | None = None) -> float:
    from curate.models import load_model

    return load_model("siglip-tiny", allow_random_init=True).forward_flops(resolution)


def test_online_jest_scores_at_the_score_resolution_and_counts_its_flops(tmp_path, small_synth, monkeypatch):
    reference = tmp_path / "reference"
    oracle_reference(small_synth, reference)
    log = EncodeLog(monkeypatch)
    online = OnlineJestConfig(ref=str(reference), ratio=0.75, chunks=4, score_resolution=16)
    run = tmp_path / "run"
    summary = train(fast(f"{small_synth}/web", run, steps=3, online=online, eval=f"{small_synth}/eval"))
    assert summary.samples == 3 * 32 and math.isfinite(summary.final_loss)
    # Each step: the super-batch B = 128 scored at 16 px without gradient, the chosen 32 trained at 32 px.
    assert log.training() == [(16, 128, False), (None, 32, True)] * 3
    assert log.evaluation() == {None}  # evaluation never sees the resolution
    assert summary.evals[-1]["eval"]["images"] == 128
    step_flops = 3 * 32 * tiny_flops() + 128 * tiny_flops(16)
    assert [m["flops"] for m in logs(run)] == pytest.approx([step_flops * s for s in (1, 2, 3)], rel=1e-12)
    assert tiny_flops(16) < 0.7 * tiny_flops()  # the text tower is not reduced: 0.62, not a quarter
    assert read_config(run).online.score_resolution == 16


def test_multi_resolution_trains_half_at_low_resolution_and_resumes_exactly(
    tmp_path, small_synth, monkeypatch
):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    config = fast(f"{small_synth}/web", resumed, steps=4, save_every=2, multi_resolution=16)
    log = EncodeLog(monkeypatch)
    train(replace(config, out=str(whole)))
    # One loss over a random half at 32 px and the other at 16 px, both with gradient.
    assert log.training() == [(None, 16, True), (16, 16, True)] * 4
    step_flops = 3 * (16 * tiny_flops() + 16 * tiny_flops(16))
    assert [m["flops"] for m in logs(whole)] == pytest.approx(
        [step_flops * s for s in range(1, 5)], rel=1e-12
    )
    assert all(math.isfinite(m["loss"]) for m in logs(whole))

    # The split is drawn from (seed, step): killed after a checkpoint and resumed, the run ends the same.
    with pytest.raises(Killed):
        train(config, progress=kill_at(3))
    with pytest.raises(CurateError, match=r"\(multi_resolution\): not the same run"):
        train(replace(config, resume=True, multi_resolution=None))
    train(replace(config, resume=True))
    assert_same_run(whole, resumed)


def resnet_checkpoint(path: Path) -> Path:
    """A checkpoint of a tiny CLIP whose image tower is a ResNet: it cannot encode at another size."""
    import open_clip

    from curate.models import save_checkpoint

    name = "curate-test-resnet"
    config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (path.parent / "configs").mkdir()
    (path.parent / "configs" / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(str(path.parent / "configs"))
    save_checkpoint(path, name, config, open_clip.create_model(name).state_dict())
    return path


def test_a_resolution_the_model_cannot_take_is_one_line_before_any_decoding(
    tmp_path, small_synth, monkeypatch
):
    decoded = []
    monkeypatch.setattr("curate.train.loop.make_data", lambda *args, **kwargs: decoded.append(args))
    resnet = str(resnet_checkpoint(tmp_path / "resnet.pt"))
    jest = ["--online-jest", "--ref", str(tmp_path / "scores")]  # checked before the reference is read
    for number, (extra, fragment) in enumerate(
        [
            (
                ["--multi-resolution", "15"],
                "--multi-resolution 15: siglip-tiny needs a multiple of its patch size 4",
            ),
            (["--multi-resolution", "64"], "--multi-resolution 64: siglip-tiny needs a multiple"),
            (["--multi-resolution", "0"], "--multi-resolution must be a whole number of pixels"),
            ([*jest, "--score-resolution", "6"], "--score-resolution 6: siglip-tiny needs a multiple"),
            ([*jest, "--score-resolution", "-16"], "--score-resolution must be a whole number of pixels"),
            (["--score-resolution", "16"], "--score-resolution needs --online-jest"),
            (["--model", resnet, "--multi-resolution", "16"], "--multi-resolution 16: " + resnet),
            (["--model", resnet, *jest, "--score-resolution", "16"], "is not an open_clip ViT"),
        ]
    ):
        run = tmp_path / f"run-{number}"
        failed = run_cli("train", f"{small_synth}/web", "-o", str(run), "--batch-size", "16", *extra)
        assert failed.returncode == 1, failed.stderr
        assert failed.stderr.count("\n") == 1 and fragment in failed.stderr, failed.stderr
        assert not (run / "config.json").exists()
    assert decoded == []


def test_the_resolutions_are_validated_trajectory_settings():
    data = DataConfig(("shards",))
    for make, option in [
        (lambda: TrainConfig(data, "run", multi_resolution=0), "--multi-resolution"),
        (lambda: TrainConfig(data, "run", multi_resolution=16.0), "--multi-resolution"),
        (lambda: TrainConfig(data, "run", multi_resolution=16, batch_size=1), "2 or more"),
        (lambda: OnlineJestConfig(ref="s", score_resolution=-4), "--score-resolution"),
    ]:
        with pytest.raises(CurateError, match=option) as error:
            make()
        assert "\n" not in str(error.value)
    base = TrainConfig(data, "run", online=OnlineJestConfig(ref="scores"))
    flexi = replace(base, multi_resolution=16, online=OnlineJestConfig(ref="scores", score_resolution=16))
    assert trajectory_changes(base, flexi) == ["online.score_resolution", "multi_resolution"]
    assert TrainConfig.from_dict(flexi.as_dict()) == flexi
    # A config.json written before these settings existed reads as full resolution.
    old = base.as_dict()
    del old["multi_resolution"], old["online"]["score_resolution"]
    assert TrainConfig.from_dict(old) == base
