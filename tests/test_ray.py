"""`--backend ray` on a real local Ray instance: the same files as the local backend, resume, recovery.

One Ray instance (2 CPUs, its files under a short /tmp folder: Ray's unix sockets allow ~107 characters)
serves the whole module; commands run in a subprocess join it with --ray-address, library calls reuse it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch
from builders import unit, write_scores
from conftest import run_cli, run_cli_subprocess
from test_import import write_datacomp_pool

from curate.backends.ray_cluster import KILL_ONCE_ENV, RayConfig
from curate.errors import CurateError
from curate.models import load_model, save_checkpoint
from curate.score import ScoreConfig, score_shards
from curate.score.schema import comparable
from curate.select import SelectConfig, read_summary, select

ray = pytest.importorskip("ray", reason="the Ray extra is not installed (make install installs it)")
pytestmark = pytest.mark.slow  # a Ray instance, worker processes and CLI drivers of their own

SHARDS = [f"0000{i}.parquet" for i in range(4)]


@pytest.fixture(scope="module")
def ray_address():
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray.init(num_cpus=2, _temp_dir=temp, include_dashboard=False, logging_level="warning")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A tiny model's checkpoint: what every Ray worker loads through load_model, as a user's would be."""
    torch.manual_seed(0)
    tiny = load_model("siglip-tiny", allow_random_init=True)
    path = tmp_path_factory.mktemp("model") / "latest.pt"
    save_checkpoint(path, tiny.open_clip_name, tiny.config, tiny.module.state_dict(), step=1)
    return str(path)


@pytest.fixture(scope="module")
def local_scores(tmp_path_factory, small_synth, checkpoint) -> str:
    """The local backend's score files of the same shards and model: what Ray must reproduce exactly."""
    out = str(tmp_path_factory.mktemp("local") / "scores")
    score_shards(f"{small_synth}/web", out, ScoreConfig(model=checkpoint, batch_size=64, workers=0))
    return out


def on_ray(checkpoint: str, workers: int = 2) -> ScoreConfig:
    return ScoreConfig(
        model=checkpoint, batch_size=64, backend="ray", ray=RayConfig(workers_per_node=workers)
    )


def same_scores(folder, reference) -> bool:
    return all(
        comparable(f"{folder}/{n}").equals(comparable(f"{reference}/{n}"), check_metadata=True)
        for n in SHARDS
    )


def test_ray_score_writes_the_local_files_and_resumes_like_them(
    tmp_path, small_synth, checkpoint, local_scores, ray_address
):
    out = tmp_path / "scores"
    result = run_cli_subprocess("score", f"{small_synth}/web", "-o", str(out), "--model", checkpoint,
                                "--batch-size", "64", "--backend", "ray", "--ray-address", ray_address,
                                "--workers-per-node", "2")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("scored 4 shards: 396 ok, 4 failed (undecodable_image 4)")
    assert "on 2 Ray workers, cpu fp32" in result.stdout
    assert sorted(os.listdir(out)) == SHARDS and same_scores(out, local_scores)

    # Resume: only the missing shard is scored again; the others are not touched.
    before = {name: os.stat(out / name).st_mtime_ns for name in SHARDS}
    os.remove(out / "00002.parquet")
    summary = score_shards(f"{small_synth}/web", str(out), on_ray(checkpoint))
    assert (summary.shards_skipped, summary.shards_done, summary.ok + sum(summary.failed.values())) == (
        3,
        1,
        100,
    )
    assert same_scores(out, local_scores)
    after = {name: os.stat(out / name).st_mtime_ns for name in SHARDS}
    assert [n for n in SHARDS if after[n] != before[n]] == ["00002.parquet"]

    other = ScoreConfig(model="siglip-small", allow_random_init=True, backend="ray")
    with pytest.raises(CurateError, match="holds scores by --model"):
        score_shards(f"{small_synth}/web", str(out), other)


def test_a_worker_killed_mid_shard_is_replaced_and_the_output_is_unchanged(
    tmp_path, monkeypatch, small_synth, checkpoint, local_scores, ray_address
):
    marker = tmp_path / "killed"
    # The first worker to finish a batch exits abruptly (os._exit) before writing its shard.
    monkeypatch.setenv(KILL_ONCE_ENV, str(marker))
    # One worker (fewer processes to start on a 2-core machine): it is restarted and retries its shard.
    summary = score_shards(f"{small_synth}/web", str(tmp_path / "scores"), on_ray(checkpoint, workers=1))
    assert marker.exists()  # a worker did die
    assert summary.shards_done == 4 and summary.samples == 400  # no shard counted twice
    assert sorted(os.listdir(tmp_path / "scores")) == SHARDS  # no duplicate, no temporary left over
    assert same_scores(tmp_path / "scores", local_scores)


def test_ray_scores_at_a_lower_resolution_like_the_local_backend(
    tmp_path, small_synth, checkpoint, ray_address
):
    shard = f"{small_synth}/web/00000.tar"
    low = dataclasses.replace(on_ray(checkpoint, workers=1), resolution=16)  # siglip-tiny: 32 px, patch 4
    # Checked by the worker once it has the model, before any shard: the user's error, in one line.
    with pytest.raises(CurateError, match="--resolution 18: .* multiple of its patch size 4"):
        score_shards(shard, str(tmp_path / "bad"), dataclasses.replace(low, resolution=18))
    assert not (tmp_path / "bad").exists()
    score_shards(shard, str(tmp_path / "ray"), low)
    local = dataclasses.replace(low, backend="local", ray=RayConfig(), workers=0)
    score_shards(shard, str(tmp_path / "local"), local)
    ours, theirs = comparable(tmp_path / "ray/00000.parquet"), comparable(tmp_path / "local/00000.parquet")
    assert ours.equals(theirs, check_metadata=True)
    assert ours.schema.metadata[b"curate.resolution"] == b"16"


@pytest.mark.parametrize("method", ["jest", "independent"])
def test_ray_select_writes_the_local_manifest_byte_for_byte(tmp_path, local_scores, ray_address, method):
    # window=2: the 396 samples make three shuffle windows, so super-batches span files and windows
    local = SelectConfig(ratio=0.75, super_batch=64, chunks=4, method=method, seed=3, window=2)
    select(local_scores, str(tmp_path / "local"), local)
    remote = dataclasses.replace(local, backend="ray", ray=RayConfig(workers_per_node=2))
    select(local_scores, str(tmp_path / "ray"), remote)
    manifest = (tmp_path / "local" / "manifest.parquet").read_bytes()
    assert manifest == (tmp_path / "ray" / "manifest.parquet").read_bytes()
    ours, theirs = read_summary(tmp_path / "ray"), read_summary(tmp_path / "local")
    assert ours["counts"] == theirs["counts"] and ours["counts"]["super_batches"] == 7
    assert ours["super_batch_results"] == theirs["super_batch_results"]
    assert ours["device"] == "ray cpu"


@pytest.mark.parametrize("method", ["jest", "clipscore"])
def test_ray_select_over_partitions_writes_the_local_parts_byte_for_byte(tmp_path, ray_address, method):
    # Planted score files (no model): 6 files in 3 partitions, one Ray task each (two rounds for clipscore:
    # its histogram, then its part).
    rng = np.random.default_rng(0)
    for s in range(6):
        image = unit(rng.normal(size=(30, 8)))
        text = unit(image + rng.normal(size=(30, 8)))
        write_scores(tmp_path / "scores", f"{s:05d}.tar", [f"{s:05d}{r:04d}" for r in range(30)], image, text)
    scores = str(tmp_path / "scores")
    local = SelectConfig(ratio=0.7, super_batch=20, chunks=2, method=method, seed=3, partitions=3, steps=7)
    select(scores, str(tmp_path / "local"), local)
    remote = dataclasses.replace(local, backend="ray", ray=RayConfig(workers_per_node=2))
    select(scores, str(tmp_path / "ray"), remote)
    names = [f"part-0000{k}.parquet" for k in range(3)]
    assert sorted(p.name for p in (tmp_path / "ray").glob("*.parquet")) == names
    for name in names:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    ours, theirs = read_summary(tmp_path / "ray"), read_summary(tmp_path / "local")
    assert ours["counts"] == theirs["counts"] and ours["counts"]["batches"] == 7
    assert ours["partitioning"] == theirs["partitioning"]
    assert ours["super_batch_results"] == theirs["super_batch_results"]
    assert ours.get("global_threshold") == theirs.get("global_threshold")


def test_ray_missing_gives_one_line(tmp_path, small_synth):
    hidden = tmp_path / "no-ray"
    (hidden / "ray").mkdir(parents=True)
    (hidden / "ray" / "__init__.py").write_text(
        "raise ImportError('No module named ray (hidden by a test)')\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{hidden}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run(
        [sys.executable, "-m", "curate_cli", "score", f"{small_synth}/web", "-o", str(tmp_path / "scores"),
         "--model", "siglip-tiny", "--allow-random-init", "--backend", "ray"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "error: --backend ray needs Ray: pip install 'jest-curate[ray]'"
    assert not (tmp_path / "scores").exists()


def test_an_unreachable_cluster_gives_one_line_not_a_hang(tmp_path, small_synth, local_scores):
    unreachable = ["--backend", "ray", "--ray-address", "127.0.0.1:1"]  # nothing listens on port 1
    for args in (
        ["score", f"{small_synth}/web", "-o", str(tmp_path / "s"), "--model", "siglip-tiny",
         "--allow-random-init"],
        ["select", local_scores, "-o", str(tmp_path / "m"), "--ratio", "0.5"],
    ):  # fmt: skip
        result = run_cli_subprocess(*args, *unreachable)  # in this process, the module's Ray would answer
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot reach the Ray cluster at 127.0.0.1:1" in lines[0], result.stderr
    assert not (tmp_path / "s").exists() and not (tmp_path / "m").exists()
    with pytest.raises(CurateError, match="need --backend ray"):
        ScoreConfig(model="siglip-tiny", ray=RayConfig(address="127.0.0.1:1"))


@pytest.mark.parametrize("method", ["jest", "clipscore"])
def test_ray_selects_an_imported_datacomp_pool_as_the_local_backend_does(tmp_path, ray_address, method):
    """Issue 29: a score folder imported from DataComp's shipped embeddings (no image, no model) is selected
    over partitions on Ray exactly as locally, a JEST selection and DataComp's CLIP-score baseline alike."""
    pool, scores = tmp_path / "metadata", tmp_path / "scores"
    write_datacomp_pool(pool)
    assert run_cli("import", "datacomp", str(pool), "-o", str(scores)).returncode == 0
    args = ["--method", method, "--ratio", "0.7", "--partitions", "2", "--chunks", "2", "--batch-size", "16"]
    local = run_cli("select", str(scores), "-o", str(tmp_path / "local"), *args)
    assert local.returncode == 0, local.stderr
    ray_args = ["--backend", "ray", "--ray-address", ray_address, "--workers-per-node", "2"]
    remote = run_cli("select", str(scores), "-o", str(tmp_path / "ray"), *args, *ray_args)
    assert remote.returncode == 0, remote.stderr
    names = ["part-00000.parquet", "part-00001.parquet"]
    assert sorted(p.name for p in (tmp_path / "ray").glob("*.parquet")) == names
    for name in names:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
