"""`curate select` on score folders with planted structure (written directly, no model needed)."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from builders import unit, write_keep_rows, write_scores
from conftest import run_cli

from curate.errors import CurateError
from curate.score.schema import OK, open_score_folder
from curate.seeds import negclip_pass_seed
from curate.select import (
    GLOBAL_METHODS,
    MANIFEST_SCHEMA,
    SelectConfig,
    build_index,
    iter_super_batches,
    manifest_metadata,
    read_manifest,
    read_summary,
    select,
    super_batch_for,
)
from curate.select.global_filter import NEGCLIP_BATCHES

DIM = 16


def planted_scores(folder, shards=6, per_shard=50, seed=0, duplicates=0, broken=()):
    """Shards of samples that are either aligned (text = image: low reference loss) or misaligned.

    Returns {key: aligned}. The last shard repeats the first `duplicates` keys of shard 0; `broken` keys
    get status undecodable_image.
    """
    rng = np.random.default_rng(seed)
    aligned = {}
    for s in range(shards):
        keys = [f"{s:05d}{r:04d}" for r in range(per_shard)]
        if s == shards - 1 and duplicates:
            keys[:duplicates] = [f"{0:05d}{r:04d}" for r in range(duplicates)]
        image = unit(rng.normal(size=(per_shard, DIM)))
        good = rng.random(per_shard) < 0.5
        text = np.where(good[:, None], image, unit(rng.normal(size=(per_shard, DIM))))
        status = ["undecodable_image" if k in broken else OK for k in keys]
        write_scores(folder, f"{s:05d}.tar", keys, image, text, status)
        for k, g in zip(keys, good, strict=True):
            aligned.setdefault(k, bool(g))
    return aligned


def test_super_batches_mix_shards_count_right_and_never_repeat_a_key(tmp_path):
    scores = tmp_path / "scores"
    broken = {"000010003", "000020007", "000040049"}
    planted_scores(scores, duplicates=5, broken=broken)
    folder = open_score_folder(scores)
    index = build_index(folder)
    assert index.counts == {
        "seen": 300,
        "not_ok": {"undecodable_image": 3},
        "nonfinite": 0,
        "where_filtered": 0,
        "duplicate_keys": 5,
        "eligible": 292,
    }
    batches = list(iter_super_batches(index, folder, None, size=64, seed=3, window=2))
    assert [len(b) for b in batches] == [64, 64, 64, 64, 36]  # the remainder is the last one
    keys = [k for b in batches for k in b.key.to_pylist()]
    assert len(keys) == len(set(keys)) == 292 and not broken & set(keys)
    assert all(b.shards >= 2 for b in batches)
    assert all(index.key.take(pa.array(b.position)).equals(b.key) for b in batches)  # rows of the index
    # The kept copy of a repeated key is its first (shard 0), never the later one.
    by_key = {k: s for b in batches for k, s in zip(b.key.to_pylist(), b.shard.to_pylist(), strict=True)}
    assert all(by_key[f"{0:05d}{r:04d}"] == "00000.tar" for r in range(5))

    out = tmp_path / "manifest"
    summary = select(
        str(scores), str(out), SelectConfig(ratio=0.75, super_batch=64, chunks=4, seed=3, window=2)
    )
    manifest = read_manifest(out)
    assert manifest.schema.remove_metadata().equals(MANIFEST_SCHEMA)
    per_batch = Counter(manifest["super_batch"].to_pylist())
    assert [r.size for r in summary.super_batches] == [64, 64, 64, 64, 36]
    assert [per_batch[i] for i in range(5)] == [16, 16, 16, 16, 9]
    assert manifest["super_batch"].to_pylist() == sorted(manifest["super_batch"].to_pylist())
    assert set(manifest["chunk"].to_pylist()) == {0, 1, 2, 3}
    assert len(set(manifest["key"].to_pylist())) == manifest.num_rows == summary.selected == 73
    recorded = read_summary(out)
    assert recorded["counts"]["duplicate_keys"] == 5 and recorded["counts"]["selected"] == 73
    assert recorded["last_super_batch"] == {"size": 36, "selected": 9, "short": True}
    assert [r["size"] for r in recorded["super_batch_results"]] == [64, 64, 64, 64, 36]


def test_same_seed_gives_a_byte_identical_manifest(tmp_path):
    scores = tmp_path / "scores"
    planted_scores(scores, shards=3, per_shard=40)
    config = SelectConfig(ratio=0.8, super_batch=32, chunks=4, seed=11, window=1)
    for name in ("a", "b"):
        select(str(scores), str(tmp_path / name), config)
    select(
        str(scores), str(tmp_path / "c"), SelectConfig(ratio=0.8, super_batch=32, chunks=4, seed=12, window=1)
    )
    first = (tmp_path / "a" / "manifest.parquet").read_bytes()
    assert first == (tmp_path / "b" / "manifest.parquet").read_bytes()
    assert first != (tmp_path / "c" / "manifest.parquet").read_bytes()


def test_steps_past_one_pass_make_whole_batches_from_seeded_passes(tmp_path):
    scores = tmp_path / "scores"
    planted_scores(scores, duplicates=5, broken={"000010003"})  # 294 eligible
    config = SelectConfig(ratio=0.75, super_batch=64, chunks=4, seed=3, window=2, steps=10)
    select(str(scores), str(tmp_path / "m"), config)
    manifest = read_manifest(tmp_path / "m")
    batches = manifest["batch"].to_pylist()
    # 294 // 64 = 4 whole super-batches a pass: 10 batches take three passes, each remainder (38) left out
    assert batches == sorted(batches) and set(batches) == set(range(10))
    assert Counter(batches) == dict.fromkeys(range(10), 16)
    assert manifest["super_batch"].to_pylist() == batches
    counts = read_summary(tmp_path / "m")["counts"]
    assert (counts["passes"], counts["left_out_of_passes"], counts["batches"]) == (3, 2 * 38, 10)
    keys = manifest["key"].to_pylist()
    assert counts["unique_keys"] == len(set(keys)) and counts["repeated_keys"] == 160 - len(set(keys)) > 0
    for b in range(10):  # never twice within a batch
        in_batch = [k for k, t in zip(keys, batches, strict=True) if t == b]
        assert len(set(in_batch)) == 16
    # The first pass is the plain one-pass selection, row for row.
    select(str(scores), str(tmp_path / "one"), dataclasses.replace(config, steps=None))
    one = read_manifest(tmp_path / "one")
    first = manifest.filter(pa.compute.less(manifest["batch"], 4))
    assert first.equals(one.filter(pa.compute.less(one["batch"], 4)))
    # Same seed, same bytes; --passes 2 is 8 batches.
    select(str(scores), str(tmp_path / "again"), config)
    assert (tmp_path / "m" / "manifest.parquet").read_bytes() == (
        tmp_path / "again" / "manifest.parquet"
    ).read_bytes()
    two = select(str(scores), str(tmp_path / "two"), dataclasses.replace(config, steps=None, passes=2))
    assert len(two.super_batches) == 8 and two.passes.passes == 2
    with pytest.raises(CurateError, match="do not fill one super-batch"):
        select(str(scores), str(tmp_path / "big"), SelectConfig(ratio=0.75, super_batch=400, steps=2))


def test_a_manifest_from_before_the_batch_column_reads_as_one_pass(tmp_path):
    old = pa.table(
        {
            "key": ["a", "b", "c"],
            "shard": ["0.tar"] * 3,
            "super_batch": pa.array([0, 0, 1], pa.int64()),
            "chunk": pa.array([0, 1, 0], pa.int32()),
            "score": pa.array([1, 2, 3], pa.float32()),
        }
    )
    (tmp_path / "m").mkdir()
    pq.write_table(old, tmp_path / "m" / "manifest.parquet")
    table = read_manifest(tmp_path / "m")
    assert table.schema.remove_metadata().equals(MANIFEST_SCHEMA)
    assert table["batch"].to_pylist() == [0, 0, 1]
    assert read_manifest(tmp_path / "m", ["key", "batch"])["batch"].to_pylist() == [0, 0, 1]


def test_joint_selection_scores_above_random_on_planted_data(tmp_path):
    scores = tmp_path / "scores"
    aligned = planted_scores(scores, shards=4, per_shard=64, seed=1)
    summary = select(str(scores), str(tmp_path / "m"), SelectConfig(ratio=0.8, super_batch=128, chunks=4))
    assert len(summary.super_batches) == 2
    for result in summary.super_batches:
        assert result.selected_score > result.random_score
    chosen = read_manifest(tmp_path / "m")["key"].to_pylist()
    assert sum(aligned[k] for k in chosen) / len(chosen) > 0.9  # about half of all samples are aligned
    recorded = read_summary(tmp_path / "m")
    assert recorded["selected_score"] > recorded["random_score"]
    assert (
        recorded["parameters"]["criterion"] == "easy"
        and recorded["models"]["reference"]["model"] == "planted"
    )


def test_where_filters_before_selection(tmp_path):
    scores = tmp_path / "scores"
    planted_scores(scores, shards=3, per_shard=40)
    table = pa.concat_tables(pq.read_table(p) for p in sorted(scores.glob("*.parquet")))
    high = {
        k for k, s in zip(table["key"].to_pylist(), table["similarity"].to_pylist(), strict=True) if s > 0.5
    }
    config = SelectConfig(ratio=0.5, super_batch=16, chunks=2, where="similarity > 0.5")
    summary = select(str(scores), str(tmp_path / "m"), config)
    chosen = set(read_manifest(tmp_path / "m")["key"].to_pylist())
    assert chosen and chosen <= high
    assert summary.counts["where_filtered"] == 120 - len(high)
    assert summary.in_super_batches == len(high)
    assert manifest_metadata(tmp_path / "m")["curate.where"] == "similarity > 0.5"


@pytest.mark.parametrize("partitions", [1, 3])
def test_keep_lets_only_a_dedup_keep_manifests_keys_be_selected(tmp_path, partitions):
    scores = tmp_path / "scores"
    planted_scores(scores, shards=3, per_shard=40)
    table = pa.concat_tables(pq.read_table(p) for p in sorted(scores.glob("*.parquet")))
    kept = table.filter(pa.array([i % 3 != 0 for i in range(table.num_rows)]))  # 80 of 120
    write_keep_rows(tmp_path / "keep", kept)
    config = SelectConfig(
        ratio=0.5, super_batch=16, chunks=2, keep=str(tmp_path / "keep"), partitions=partitions
    )
    summary = select(str(scores), str(tmp_path / "m"), config)
    chosen = set(read_manifest(tmp_path / "m")["key"].to_pylist())
    assert chosen and chosen <= set(kept["key"].to_pylist())
    assert summary.counts["not_kept"] == 40 and summary.counts["eligible"] == 80
    assert read_summary(tmp_path / "m")["inputs"]["keep"] == str(tmp_path / "keep")
    removed = run_cli(
        "query", "SELECT count(*) AS n FROM scores ANTI JOIN keep USING (key)", "--format", "csv",
        "--scores", str(scores), "--keep", str(tmp_path / "keep"),
    )  # fmt: skip
    assert removed.returncode == 0 and removed.stdout.split() == ["n", "40"], removed.stderr
    missing = run_cli(
        "select", str(scores), "-o", str(tmp_path / "m2"), "--ratio", "0.5", "--keep", str(scores)
    )
    assert (
        missing.returncode == 1 and "no keep-manifest" in missing.stderr and "Traceback" not in missing.stderr
    )


def test_learner_is_joined_by_key_and_missing_keys_are_reported(tmp_path):
    reference, learner = tmp_path / "reference", tmp_path / "learner"
    planted_scores(reference, shards=3, per_shard=40, seed=2)
    rng = np.random.default_rng(5)
    # The learner scored the same samples in another file layout, lost 7 keys and failed on 3.
    ref = pa.concat_tables(pq.read_table(p) for p in sorted(reference.glob("*.parquet")))
    keys = ref["key"].to_pylist()
    lost, failed = set(keys[10:17]), set(keys[50:53])
    kept = [k for k in keys if k not in lost][::-1]
    image = unit(rng.normal(size=(len(kept), DIM)))
    text = unit(rng.normal(size=(len(kept), DIM)))
    status = ["undecodable_image" if k in failed else OK for k in kept]
    write_scores(learner, "all.tar", kept, image, text, status, model="early")
    warnings = []
    config = SelectConfig(ratio=0.5, super_batch=32, chunks=2, criterion="learnability", learner=str(learner))
    summary = select(str(reference), str(tmp_path / "m"), config, warn=warnings.append)
    assert summary.counts["learner_missing"] == 7 and summary.counts["learner_not_ok"] == 3
    assert summary.in_super_batches == 110
    assert any("7 samples have no learner score" in w for w in warnings)
    chosen = set(read_manifest(tmp_path / "m")["key"].to_pylist())
    assert not chosen & (lost | failed)
    recorded = read_summary(tmp_path / "m")
    assert recorded["counts"]["learner_missing"] == 7
    assert recorded["models"]["learner"]["model"] == "early"
    for result in summary.super_batches:
        assert result.selected_score > result.random_score


def test_learner_rows_line_up_with_the_reference(tmp_path):
    """A learner file in another row order must still give each sample its own embeddings."""
    reference, learner = tmp_path / "reference", tmp_path / "learner"
    planted_scores(reference, shards=2, per_shard=20)
    ref = pa.concat_tables(pq.read_table(p) for p in sorted(reference.glob("*.parquet")))
    order = np.random.default_rng(0).permutation(ref.num_rows)
    shuffled = ref.take(pa.array(order))
    from curate.score.schema import embeddings_numpy

    write_scores(
        learner,
        "x.tar",
        shuffled["key"].to_pylist(),
        embeddings_numpy(shuffled["image_emb"]).astype(np.float32),
        embeddings_numpy(shuffled["text_emb"]).astype(np.float32),
    )
    folders = open_score_folder(reference), open_score_folder(learner)
    index = build_index(*folders)
    for batch in iter_super_batches(index, *folders, size=16, seed=0):
        np.testing.assert_array_equal(batch.reference.image, batch.learner.image)
        np.testing.assert_array_equal(batch.reference.text, batch.learner.text)


def test_short_last_super_batch_and_batch_size(tmp_path):
    scores = tmp_path / "scores"
    planted_scores(scores, shards=1, per_shard=66)
    summary = select(str(scores), str(tmp_path / "m"), SelectConfig(ratio=0.8, super_batch=32, chunks=2))
    assert [r.size for r in summary.super_batches] == [32, 32]
    assert summary.skipped_last == 2  # round(0.2 * 2) = 0: nothing can be kept from it, and it is said
    assert read_summary(tmp_path / "m")["last_super_batch"]["selected"] == 0
    assert super_batch_for(256, 0.75) == 1024


def test_defaults_resolve_once_in_the_config():
    assert SelectConfig(ratio=0.8).super_batch == 16384
    assert SelectConfig(ratio=0.8).batch_size == round(0.2 * 16384)
    assert SelectConfig(ratio=0.75, batch_size=256).super_batch == 1024
    assert SelectConfig(ratio=0.5).criterion == "easy"
    assert SelectConfig(ratio=0.5, learner="early/").criterion == "learnability"
    resolved = SelectConfig(ratio=0.5, batch_size=32)
    assert dataclasses.replace(resolved, seed=1).super_batch == 64  # a resolved config carries both, agreeing
    with pytest.raises(CurateError, match="not both"):
        SelectConfig(ratio=0.5, super_batch=64, batch_size=30)
    for bad in (float("nan"), -0.1):
        with pytest.raises(CurateError, match="ratio"):
            SelectConfig(ratio=bad)
    with pytest.raises(CurateError, match="temperature"):
        SelectConfig(ratio=0.5, temperature=float("nan"))


def test_paths_are_urls_or_local_never_a_local_folder_named_like_a_url(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    planted_scores(tmp_path / "scores", shards=2, per_shard=40)
    config = SelectConfig(ratio=0.5, super_batch=32, chunks=2, shards="s3://bucket/crawl")
    with pytest.raises(CurateError, match="only local paths"):
        select("scores", "memory://manifest", config)
    select(f"file://{tmp_path}/scores", "m", config)
    # A remote shard location is recorded as given, for export to open through fsspec.
    assert manifest_metadata("m")["curate.shards"] == "s3://bucket/crawl"
    assert read_summary("m")["inputs"]["scores"] == str(tmp_path / "scores")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "scores"]


def test_bad_inputs_are_clear_errors(tmp_path):
    scores = tmp_path / "scores"
    planted_scores(scores, shards=1, per_shard=20)
    with pytest.raises(CurateError, match="does not exist"):
        select(str(tmp_path / "nope"), str(tmp_path / "m"), SelectConfig(ratio=0.5, super_batch=8, chunks=2))
    with pytest.raises(CurateError, match="needs --learner"):
        SelectConfig(ratio=0.5, criterion="hard")
    with pytest.raises(CurateError, match="method"):
        SelectConfig(ratio=0.5, method="best")
    with pytest.raises(CurateError, match="ratio"):
        SelectConfig(ratio=1.0)
    with pytest.raises(CurateError, match="--where 'nope > 1'.*nope"):
        select(
            str(scores),
            str(tmp_path / "m"),
            SelectConfig(ratio=0.5, super_batch=8, chunks=2, where="nope > 1"),
        )
    with pytest.raises(CurateError, match="no sample is left"):
        select(
            str(scores),
            str(tmp_path / "m"),
            SelectConfig(ratio=0.5, super_batch=8, chunks=2, where="similarity > 2"),
        )
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CurateError, match="no score files"):
        open_score_folder(empty)
    assert not (tmp_path / "m" / "manifest.parquet").exists()


def test_rows_scored_ok_with_nan_embeddings_are_never_drawn(tmp_path):
    """Score files written before score refused non-finite embeddings (or by hand) may hold them."""
    scores = tmp_path / "scores"
    planted_scores(scores, shards=2, per_shard=40)
    rng = np.random.default_rng(1)
    image = unit(rng.normal(size=(40, DIM)))
    image[:7] = np.nan
    keys = [f"9{r:04d}" for r in range(40)]
    write_scores(scores, "00002.tar", keys, image, image.copy())
    index = build_index(open_score_folder(scores))
    assert index.counts["nonfinite"] == 7 and index.counts["eligible"] == 113
    assert not set(keys[:7]) & set(index.key.to_pylist())
    select(str(scores), str(tmp_path / "m"), SelectConfig(ratio=0.5, super_batch=40, chunks=2))
    manifest = read_manifest(tmp_path / "m")
    assert not set(keys[:7]) & set(manifest["key"].to_pylist())
    assert np.isfinite(manifest["score"].to_numpy()).all()


def test_select_from_the_command_line(tmp_path):
    scores = tmp_path / "scores"
    planted_scores(scores, shards=2, per_shard=40)
    out = tmp_path / "manifest"
    args = ["select", str(scores), "-o", str(out), "--ratio", "0.75", "--batch-size", "10", "--chunks", "2"]
    nope = run_cli(*args, "--shards", str(tmp_path / "shards"))  # refused now, not at export time
    assert nope.returncode == 1 and "no such file or folder" in nope.stderr and not out.exists()
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards/00000.tar").touch()
    other_crawl = run_cli(*args, "--shards", str(tmp_path / "shards"))
    assert other_crawl.returncode == 1 and "00001.tar" in other_crawl.stderr and not out.exists()
    (tmp_path / "shards/00001.tar").touch()
    result = run_cli(*args, "--seed", "4", "--shards", str(tmp_path / "shards"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1 and result.stdout.startswith(
        "selected 20 of 80 samples (80 eligible"
    )
    recorded = json.loads((out / "summary.json").read_text())
    assert recorded["command"].startswith("curate select ") and "--batch-size 10" in recorded["command"]
    assert recorded["parameters"]["super_batch"] == 40 and recorded["parameters"]["seed"] == 4
    assert recorded["inputs"]["shards"] == str(tmp_path / "shards")

    missing = run_cli("select", str(tmp_path / "nope"), "-o", str(out), "--ratio", "0.5")
    no_learner = run_cli(
        "select", str(scores), "-o", str(out), "--ratio", "0.5", "--criterion", "learnability"
    )
    for result, fragment in ((missing, "does not exist"), (no_learner, "needs --learner")):
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.strip().count("\n") == 0 and fragment in result.stderr


# --- global filters (clipscore, negclip) ---------------------------------------------------------------

# The index's rule (status ok, --where, first of each key in file/row order) restated in SQL, for a twin.
ELIGIBLE = """SELECT key, similarity FROM read_parquet({files}, filename = true, file_row_number = true)
WHERE status = 'ok' AND ({where})
QUALIFY row_number() OVER (PARTITION BY key ORDER BY filename, file_row_number) = 1"""


def strict_json(path):
    """summary.json parsed as any JSON reader would: a bare NaN or Infinity is an error."""
    return json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"{path} holds {name}"))


def duckdb_top(scores, ratio, where=None):
    """The clipscore kept set by DuckDB alone: k = round((1 - F) * eligible), similarity descending, key."""
    files = "[" + ", ".join(f"'{p}'" for p in sorted(scores.glob("*.parquet"))) + "]"
    eligible = ELIGIBLE.format(files=files, where=where or "true")
    with duckdb.connect() as con:
        n = con.execute(f"SELECT count(*) FROM ({eligible})").fetchall()[0][0]
        k = round((1.0 - ratio) * n)
        top = f"SELECT key, similarity FROM ({eligible}) ORDER BY similarity DESC, key LIMIT {k}"
        return n, dict(con.execute(top).fetchall())


@pytest.mark.parametrize("where", [None, "similarity < 0.999 OR key < '00003'"])
def test_clipscore_keeps_the_global_top_share_duckdb_keeps(tmp_path, where):
    scores = tmp_path / "scores"
    planted_scores(scores, duplicates=5, broken={"000010003", "000020007"})  # about half tie at 1.0
    eligible, top = duckdb_top(scores, 0.7, where)
    config = SelectConfig(ratio=0.7, batch_size=16, method="clipscore", where=where, seed=5)
    summary = select(str(scores), str(tmp_path / "m"), config)
    manifest = read_manifest(tmp_path / "m")
    keys = manifest["key"].to_pylist()
    assert summary.counts["eligible"] == eligible and summary.counts["duplicate_keys"] == 5
    assert len(keys) == len(set(keys)) == len(top) == summary.filter.kept and set(keys) == set(top)
    assert summary.filter.threshold == pytest.approx(min(top.values()))
    # One pass: batches of 16 in order, the last one short; scores are the similarities, super_batch -1.
    assert Counter(manifest["batch"].to_pylist()) == {
        b: min(16, len(top) - 16 * b) for b in range(-(-len(top) // 16))
    }
    assert set(manifest["super_batch"].to_pylist()) == {-1} and set(manifest["chunk"].to_pylist()) == {0}
    assert manifest["score"].to_pylist() == pytest.approx([top[k] for k in keys])
    recorded = strict_json(tmp_path / "m" / "summary.json")
    assert recorded["selected_score"] is None and recorded["super_batch_results"] == []
    assert recorded["filter"]["kept"] == recorded["counts"]["kept"] == len(top)
    assert recorded["counts"]["batches"] == summary.batches and recorded["counts"]["passes"] == 1


def test_clipscore_with_steps_makes_whole_batches_from_seeded_shuffles(tmp_path):
    scores = tmp_path / "scores"
    planted_scores(scores, duplicates=5)  # 295 eligible: 89 kept at 0.7, 5 whole batches of 16 a pass
    _, top = duckdb_top(scores, 0.7)
    config = SelectConfig(ratio=0.7, batch_size=16, method="clipscore", seed=5, steps=12)
    warnings = []
    with_learner = dataclasses.replace(config, learner="x")
    summary = select(str(scores), str(tmp_path / "m"), with_learner, warn=warnings.append)
    assert "--learner is not used by --method clipscore; selecting from the reference alone" in warnings
    manifest = read_manifest(tmp_path / "m")
    keys, batches = manifest["key"].to_pylist(), manifest["batch"].to_pylist()
    assert batches == sorted(batches) and Counter(batches) == dict.fromkeys(range(12), 16)
    for b in range(12):  # a key recurs across passes, never within a batch
        assert len({k for k, t in zip(keys, batches, strict=True) if t == b}) == 16
    assert set(keys) <= set(top) and summary.unique_keys == len(set(keys))
    counts = strict_json(tmp_path / "m" / "summary.json")["counts"]
    # 12 batches at 5 a pass take three passes; the two whole ones each leave 89 - 80 = 9 out
    assert (counts["passes"], counts["left_out_of_passes"], counts["selected"]) == (3, 18, 192)
    assert counts["repeated_keys"] == 192 - len(set(keys)) > 0
    # --passes 2: exactly two passes' worth; same seed, same bytes; another seed, other batches.
    two = select(str(scores), str(tmp_path / "two"), dataclasses.replace(config, steps=None, passes=2))
    assert (two.batches, two.passes.passes, two.selected) == (10, 2, 160)
    select(str(scores), str(tmp_path / "again"), config)
    select(str(scores), str(tmp_path / "other"), dataclasses.replace(config, seed=6))
    first = (tmp_path / "m" / "manifest.parquet").read_bytes()
    assert first == (tmp_path / "again" / "manifest.parquet").read_bytes()
    assert first != (tmp_path / "other" / "manifest.parquet").read_bytes()
    assert set(read_manifest(tmp_path / "other")["key"].to_pylist()) <= set(top)  # the same kept set
    big = SelectConfig(ratio=0.9, batch_size=100, method="clipscore", steps=2)
    with pytest.raises(CurateError, match="keeps 29 samples, fewer than one batch of 100"):
        select(str(scores), str(tmp_path / "big"), big)
    assert not (tmp_path / "big").exists()


def negclip_twin(folder, index, config):
    """negCLIPLoss in float64 numpy over the random batches the selection uses, rebuilt here: the
    super-batches of K seeded passes, a pass's short last one merged into the one before."""
    t = folder.metadata.logit_scale
    total, diagonal = np.zeros(len(index)), np.zeros(len(index))
    for number in range(NEGCLIP_BATCHES):
        seed = negclip_pass_seed(config.seed, number)
        batches = [
            (b.position, b.reference.image.astype(np.float64), b.reference.text.astype(np.float64))
            for b in iter_super_batches(index, folder, None, config.super_batch, seed, config.window)
        ]
        if len(batches) > 1 and len(batches[-1][0]) < config.super_batch:
            tail = batches.pop()
            batches[-1] = tuple(np.concatenate([a, b]) for a, b in zip(batches[-1], tail, strict=True))
        assert sorted(np.concatenate([p for p, _, _ in batches])) == list(range(len(index)))
        for position, image, text in batches:
            logits = t * image @ text.T
            rows, cols = np.logaddexp.reduce(logits, axis=1), np.logaddexp.reduce(logits, axis=0)
            total[position] += 0.5 * (rows + cols)
            diagonal[position] = t * (image * text).sum(1)
    return diagonal - total / NEGCLIP_BATCHES


def test_negclip_scores_match_a_numpy_twin_and_keep_its_top_share(tmp_path):
    scores = tmp_path / "scores"
    planted_scores(scores, shards=4, per_shard=50, duplicates=3)  # 197 eligible: 4 of 48 and a tail of 5
    config = SelectConfig(ratio=0.6, super_batch=48, method="negclip", seed=2, window=2)
    summary = select(str(scores), str(tmp_path / "m"), config)
    folder = open_score_folder(scores)
    index = build_index(folder)
    expected = dict(zip(index.key.to_pylist(), negclip_twin(folder, index, config), strict=True))
    manifest = read_manifest(tmp_path / "m")
    keys = manifest["key"].to_pylist()
    tolerance = 2e-5  # float32 GEMMs of float16 embeddings at t = 10 against float64 (seen: 2e-6)
    got, want = manifest["score"].to_numpy(), [expected[k] for k in keys]
    np.testing.assert_allclose(got, want, rtol=0, atol=tolerance)
    ranked = sorted(expected, key=lambda k: (-expected[k], k))
    k = round(0.4 * len(index))
    assert expected[ranked[k - 1]] - expected[ranked[k]] > 2 * tolerance  # so the top-k set is exact
    assert len(keys) == len(set(keys)) == k and set(keys) == set(ranked[:k])
    assert summary.filter.threshold == pytest.approx(expected[ranked[k - 1]], abs=tolerance)
    # On planted data it keeps the aligned pairs, as the CLIP score would.
    aligned = planted_scores(tmp_path / "again", shards=4, per_shard=50, duplicates=3)
    assert sum(aligned[k] for k in keys) / len(keys) > 0.9
    recorded = strict_json(tmp_path / "m" / "summary.json")
    assert recorded["filter"]["random_batches"] == NEGCLIP_BATCHES
    assert recorded["parameters"]["method"] == "negclip"
    select(str(scores), str(tmp_path / "same"), config)
    first = (tmp_path / "m" / "manifest.parquet").read_bytes()
    assert first == (tmp_path / "same" / "manifest.parquet").read_bytes()


def test_global_methods_skip_the_per_super_batch_checks():
    assert GLOBAL_METHODS == ("clipscore", "negclip")
    # round(0.01 * 8) = 0 would keep nothing of a super-batch; a global filter keeps 1% of the crawl.
    assert SelectConfig(ratio=0.99, super_batch=8, chunks=16, method="clipscore").is_global
    assert not SelectConfig(ratio=0.5, method="negclip", learner="early/").uses_learner
    with pytest.raises(CurateError, match="clipscore, negclip"):
        SelectConfig(ratio=0.5, method="clip")


def test_clipscore_from_the_command_line(tmp_path):
    scores = tmp_path / "scores"
    planted_scores(scores, shards=2, per_shard=40)
    out = tmp_path / "manifest"
    result = run_cli(
        "select", str(scores), "-o", str(out), "--ratio", "0.7", "--batch-size", "8", "--method", "clipscore"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1, result.stdout
    assert result.stdout.startswith("kept the top 30% by similarity (threshold ")
    assert "24 of 80 samples (80 eligible), selected 24 in 3 batches of 8" in result.stdout
    assert strict_json(out / "summary.json")["parameters"]["method"] == "clipscore"
    helped = run_cli("select", "--help")
    assert helped.returncode == 0
    text = " ".join(helped.stdout.split())
    assert "clipscore" in text and "negclip" in text


def test_false_negatives_mask_is_recorded_and_mask_at_one_changes_nothing(tmp_path):
    scores = tmp_path / "scores"
    planted_scores(scores, shards=2, per_shard=60, duplicates=0)
    base = ["select", str(scores), "--ratio", "0.75", "--batch-size", "10", "--chunks", "2"]
    plain = run_cli(*base, "-o", str(tmp_path / "plain"))
    at_one = run_cli(*base, "-o", str(tmp_path / "one"), "--false-negatives", "mask:1")
    masked = run_cli(*base, "-o", str(tmp_path / "masked"), "--false-negatives", "mask:0.2")
    assert plain.returncode == at_one.returncode == masked.returncode == 0, masked.stderr
    manifest = "manifest.parquet"
    assert (tmp_path / "one" / manifest).read_bytes() == (tmp_path / "plain" / manifest).read_bytes()
    assert manifest_metadata(tmp_path / "masked")["curate.false_negatives"] == "mask:0.2"
    assert "curate.false_negatives" not in manifest_metadata(tmp_path / "plain")
    # how much the mask took, per super-batch and overall, for the chosen and a random batch
    summary = json.loads((tmp_path / "masked/summary.json").read_text())
    lines = summary["super_batch_results"]
    assert summary["masked_share"] == pytest.approx(
        {k: np.mean([r[f"{k}_masked"] for r in lines]) for k in ("selected", "random")}
    )
    assert all(0 < r["random_masked"] < 1 for r in lines)
    assert "false negative pairs masked" in masked.stdout
    # examples/false_negative_pairs.sql counts the same pairs from the manifest and the scores
    sql = (Path(__file__).parents[1] / "examples/false_negative_pairs.sql").read_text().replace("0.99", "0.2")
    query = ["query", "--manifest", str(tmp_path / "masked"), "--scores", str(scores), "--format", "csv"]
    counted = run_cli(*query, "--", sql)
    batches, share = counted.stdout.strip().splitlines()[1].split(",")
    assert int(batches) == len(lines) == 3 and all(r["selected"] == 10 for r in lines)  # equal batches
    assert float(share) > 0 and float(share) == pytest.approx(summary["masked_share"]["selected"], abs=1e-9)
    plain_summary = json.loads((tmp_path / "plain/summary.json").read_text())
    assert (
        "masked_share" not in plain_summary
        and "selected_masked" not in plain_summary["super_batch_results"][0]
    )
    assert (
        read_manifest(tmp_path / "masked")["key"].to_pylist()
        != read_manifest(tmp_path / "plain")["key"].to_pylist()
    )
    bad = run_cli(*base, "-o", str(tmp_path / "bad"), "--false-negatives", "mask:2")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "mask:T" in bad.stderr
