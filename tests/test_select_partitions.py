"""`curate select` over partitions of the score files: the one-partition bytes, parts, re-runs, thresholds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from builders import unit, write_scores
from conftest import run_cli

from curate.errors import CurateError
from curate.score.schema import open_score_folder
from curate.select import SelectConfig, read_manifest, read_summary, select
from curate.select.manifest import count_unique_keys
from curate.select.plan import plan_partitions, split_steps
from curate.train.data import load_plan

DIM = 8
SHARDS, PER_SHARD = 6, 40


def scores_folder(folder, seed=0, noise=1.0):
    """SHARDS score files of PER_SHARD samples, key `{shard:05d}{row:04d}`; text = image + noise, so every
    similarity is distinct (no tied clip scores) and about half the samples are well aligned."""
    rng = np.random.default_rng(seed)
    for s in range(SHARDS):
        keys = [f"{s:05d}{r:04d}" for r in range(PER_SHARD)]
        image = unit(rng.normal(size=(PER_SHARD, DIM)))
        scale = np.where(rng.random(PER_SHARD) < 0.5, 0.1, noise)[:, None]
        text = unit(image + scale * rng.normal(size=(PER_SHARD, DIM)))
        write_scores(folder, f"{s:05d}.tar", keys, image, text)
    return str(folder)


def part_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".parquet")


@pytest.mark.parametrize(
    "settings",
    [
        {"ratio": 0.75, "super_batch": 32, "chunks": 4, "window": 2},
        {"ratio": 0.5, "super_batch": 20, "chunks": 2, "steps": 15},
        {"ratio": 0.7, "batch_size": 12, "method": "clipscore"},
    ],
    ids=["jest", "steps", "clipscore"],
)
def test_one_partition_writes_the_manifest_of_a_selection_without_partitions(tmp_path, settings):
    scores = scores_folder(tmp_path / "scores")
    select(scores, str(tmp_path / "plain"), SelectConfig(seed=5, **settings))
    select(scores, str(tmp_path / "one"), SelectConfig(seed=5, partitions=1, **settings))
    assert part_files(tmp_path / "one") == ["manifest.parquet"]
    one, plain = (tmp_path / name / "manifest.parquet" for name in ("one", "plain"))
    assert one.read_bytes() == plain.read_bytes()
    summary = read_summary(tmp_path / "one")
    assert summary["partitioning"]["partitions"] == 1
    assert summary["partitioning"]["each"][0]["rows"] == SHARDS * PER_SHARD


def test_partitions_are_contiguous_file_ranges_and_share_steps_by_rows(tmp_path):
    folder = open_score_folder(scores_folder(tmp_path / "scores"))
    plan = plan_partitions(folder, None, 100, None)  # 240 rows, about 100 each: 3 partitions of 2 files
    assert [p.reference.files for p in plan] == [folder_files(folder, a, a + 2) for a in (0, 2, 4)]
    assert [p.rows for p in plan] == [80, 80, 80]
    four = plan_partitions(folder, 4, None, None)
    assert [p.file_count for p in four] == [1, 2, 1, 2]  # 1.5 files each: ties cut early
    assert split_steps(10, [100, 300]) == [3, 7] and split_steps(5, [10, 10, 10]) == [2, 2, 1]
    with pytest.raises(CurateError, match="--partitions 7 is more than the 6 score files"):
        plan_partitions(folder, 7, None, None)
    with pytest.raises(CurateError, match="--steps 2 is fewer than the 3 partitions"):
        plan_partitions(folder, 3, None, 2)
    with pytest.raises(CurateError, match="--partitions must be a positive integer, got 0"):
        SelectConfig(ratio=0.5, partitions=0)
    with pytest.raises(CurateError, match="--partition-size must be a positive integer, got -3"):
        SelectConfig(ratio=0.5, partition_size=-3)


def folder_files(folder, lo, hi):
    return tuple(str(Path(f).absolute()) for f in folder.files[lo:hi])


def test_several_partitions_write_parts_that_every_reader_reads(tmp_path):
    scores = scores_folder(tmp_path / "scores")
    out = tmp_path / "m"
    config = SelectConfig(ratio=0.5, super_batch=20, chunks=2, seed=2, steps=6, partitions=3)
    summary = select(scores, str(out), config)
    assert part_files(out) == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    parts = [pq.read_table(out / name) for name in part_files(out)]
    manifest = read_manifest(out)
    assert manifest.num_rows == sum(p.num_rows for p in parts) == summary.selected == 6 * 10
    # Partition k holds batches k, k + 3, ...: unique across parts, interleaved in training order.
    assert [sorted(set(p["batch"].to_pylist())) for p in parts] == [[0, 3], [1, 4], [2, 5]]
    for k, part in enumerate(parts):
        shards = {int(s[:5]) for s in part["shard"].to_pylist()}
        assert shards <= {2 * k, 2 * k + 1}  # only its own files' samples
        assert part.schema.metadata[b"curate.partition"] == str(k).encode()
    batch_keys = {}
    for key, batch in zip(manifest["key"].to_pylist(), manifest["batch"].to_pylist(), strict=True):
        batch_keys.setdefault(batch, []).append(int(key[:5]) // 2)  # the partition of the key's shard
    assert all(len(set(owners)) == 1 for owners in batch_keys.values())
    assert count_unique_keys(out) == summary.unique_keys == 60
    record = read_summary(out)
    assert record["counts"]["selected"] == 60 and record["counts"]["seen"] == SHARDS * PER_SHARD
    assert [p["steps"] for p in record["partitioning"]["each"]] == [2, 2, 2]
    second = parts[1].filter(pc.equal(parts[1]["batch"], 1))["key"].to_pylist()
    assert load_plan(str(out), seed=0).keys_of(1) == second  # step 1: partition 1's first batch
    queried = run_cli(
        "query", "SELECT count(*) AS n FROM manifest", "--manifest", str(out), "--format", "json"
    )
    assert queried.returncode == 0, queried.stderr
    assert json.loads(queried.stdout) == {"n": 60}  # one JSON object per row
    line = run_cli("select", scores, "-o", str(tmp_path / "cli"), "--ratio", "0.5", "--super-batch", "20",
                   "--chunks", "2", "--seed", "2", "--steps", "6", "--partitions", "3")  # fmt: skip
    assert line.returncode == 0 and "; 3 partitions" in line.stdout, line.stderr
    for name in part_files(out):
        assert (tmp_path / "cli" / name).read_bytes() == (out / name).read_bytes()


def test_training_follows_the_rank_of_batch_ids_that_partitions_leave_gaps_in(tmp_path):
    # 4 partitions of 1, 2, 1, 2 files, one plain pass each: 2, 3, 2, 3 batches, so ids 0..7 then 9, 11.
    scores = scores_folder(tmp_path / "scores")
    select(scores, str(tmp_path / "m"), SelectConfig(ratio=0.5, super_batch=30, chunks=2, partitions=4))
    manifest = read_manifest(tmp_path / "m")
    ids = sorted(set(manifest["batch"].to_pylist()))
    assert ids == [0, 1, 2, 3, 4, 5, 6, 7, 9, 11]
    plan = load_plan(str(tmp_path / "m"), seed=0)
    assert len(plan) == len(ids)
    for step, batch in enumerate(ids):
        assert plan.keys_of(step) == manifest.filter(pc.equal(manifest["batch"], batch))["key"].to_pylist()


def test_a_rerun_with_fewer_partitions_leaves_no_stale_parts(tmp_path):
    scores = scores_folder(tmp_path / "scores")
    out = tmp_path / "m"
    config = SelectConfig(ratio=0.5, super_batch=20, chunks=2, seed=2)
    select(scores, str(out), SelectConfig(**{**vars_of(config), "partitions": 3}))
    select(scores, str(out), SelectConfig(**{**vars_of(config), "partitions": 2}))
    assert part_files(out) == ["part-00000.parquet", "part-00001.parquet"]
    assert read_manifest(out).num_rows == read_summary(out)["counts"]["selected"]
    select(scores, str(out), config)
    assert part_files(out) == ["manifest.parquet"]
    select(scores, str(out), SelectConfig(**{**vars_of(config), "partitions": 2}))
    assert part_files(out) == ["part-00000.parquet", "part-00001.parquet"]
    assert sorted(p.name for p in out.iterdir()) == [*part_files(out), "summary.json"]  # nothing staged
    # A folder mixing two selections' files (a run killed while replacing them) is refused, not misread.
    shutil.copy(out / "part-00001.parquet", out / "part-00002.parquet")
    with pytest.raises(CurateError, match="not parts 0..2 of one selection"):
        read_manifest(out)
    shutil.copy(out / "part-00000.parquet", out / "manifest.parquet")
    with pytest.raises(CurateError, match="holds both manifest.parquet and part files"):
        count_unique_keys(out)


def vars_of(config):
    given = ("ratio", "super_batch", "chunks", "seed")
    return {name: getattr(config, name) for name in given}


def test_clipscore_over_partitions_keeps_the_top_share_within_the_recorded_bound(tmp_path):
    scores = scores_folder(tmp_path / "scores")
    settings = {"ratio": 0.7, "batch_size": 12, "method": "clipscore", "seed": 1}
    select(scores, str(tmp_path / "exact"), SelectConfig(**settings))
    summary = select(scores, str(tmp_path / "two"), SelectConfig(partitions=2, **settings))
    exact = set(read_manifest(tmp_path / "exact")["key"].to_pylist())
    kept = set(read_manifest(tmp_path / "two")["key"].to_pylist())
    threshold = read_summary(tmp_path / "two")["global_threshold"]
    target = round(0.3 * SHARDS * PER_SHARD)
    assert len(exact) == threshold["exact_top_count"] == target
    assert exact <= kept  # the threshold bin and all above: the exact top share and a few ties of its bin
    assert 0 <= len(kept) - target < threshold["bound"] == summary.threshold["bound"]
    assert threshold["kept"] == len(kept) == summary.filter.kept
    assert threshold["kept_share"] == pytest.approx(len(kept) / (SHARDS * PER_SHARD))
    assert min(read_manifest(tmp_path / "two")["score"].to_pylist()) >= threshold["threshold"]
