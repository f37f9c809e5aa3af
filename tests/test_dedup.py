import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from builders import unit, write_scores
from conftest import run_cli
from scipy.sparse.csgraph import connected_components

from curate.dedup import DedupConfig, dedup, keep_file, keep_metadata, read_keep_keys
from curate.dedup.grouping import keepers, kmeans, near_duplicate_groups, nearest, normalise
from curate.errors import CurateError
from curate.score import ScoreConfig, score_shards
from curate.score.schema import OK, embeddings_numpy, open_score_folder

D = 16


def planted_folder(folder: Path, seed: int = 0, files: int = 3, rows: int = 60) -> dict[str, np.ndarray]:
    """Score files of random unit image embeddings with near-duplicate families planted at known cosines
    (jitter 0.02 to 0.3 around a few bases) and some rows not ok; returns {key: image embedding}."""
    rng = np.random.default_rng(seed)
    bases = unit(rng.normal(size=(8, D)))
    planted = {}
    for f in range(files):
        image = unit(rng.normal(size=(rows, D)))
        family = rng.random(rows) < 0.4
        jitter = rng.choice([0.02, 0.05, 0.1, 0.3], size=rows)[:, None]
        image[family] = unit(
            bases[rng.integers(8, size=family.sum())] + jitter[family] * rng.normal(size=(family.sum(), D))
        )
        text = unit(image + rng.normal(size=(rows, D)))
        keys = [f"{f:05d}{r:04d}" for r in range(rows)]
        status = [OK if rng.random() > 0.05 else "undecodable_image" for _ in range(rows)]
        write_scores(folder, f"{f:05d}.tar", keys, image, text, status=status)
        planted.update(zip(keys, image, strict=True))
    return planted


def run(scores: Path, out: Path, threshold: float, **settings):
    return dedup(str(scores), str(out), DedupConfig(threshold=threshold, device="cpu", **settings))


def kept_keys(out: Path) -> list[str]:
    return read_keep_keys(out).column("key").to_pylist()


def dense_keep(scores: Path, threshold: float, clusters: np.ndarray | None = None) -> list[str]:
    """The slow twin: every ok row at once, the full cosine matrix (pairs in different clusters masked),
    connected components, the highest similarity of each (the first of equals), in file, row order."""
    table = open_score_folder(scores).read_columns(["key", "image_emb", "similarity"], eligible_only=True)
    rows = normalise(torch.from_numpy(embeddings_numpy(table["image_emb"])))
    cosine = (rows @ rows.T).clamp(-1, 1).numpy()
    linked = cosine > np.float32(threshold)
    if clusters is not None:
        linked &= clusters[:, None] == clusters[None, :]
    _, groups = connected_components(linked, directed=False)
    similarity = table["similarity"].to_numpy()
    keys = table["key"].to_pylist()
    best = {}
    for i, g in enumerate(groups):  # rows in file, row order: a tie keeps the first
        if g not in best or similarity[i] > similarity[best[g]]:
            best[g] = i
    return [keys[i] for i in sorted(best.values())]


def test_exact_copies_are_one_group_whose_best_captioned_member_is_kept(tmp_path):
    rng = np.random.default_rng(1)
    image = unit(rng.normal(size=(40, D)))
    text = unit(rng.normal(size=(40, D)))
    image[[7, 20, 33]] = image[3]  # four identical images; row 20's caption matches it exactly
    text[20] = image[3]
    image[11] = image[12]  # two identical images with identical captions: the first is kept
    text[11] = text[12]
    keys = [f"0000{r:04d}" for r in range(40)]
    write_scores(tmp_path / "scores", "00000.tar", keys, image, text)
    summary = run(tmp_path / "scores", tmp_path / "keep", 0.99, clusters=4)
    removed = set(keys) - set(kept_keys(tmp_path / "keep"))
    assert removed == {keys[3], keys[7], keys[33], keys[12]}
    assert (summary.kept, summary.removed, summary.groups, summary.largest_group) == (36, 4, 2, 4)
    sizes = dict(
        zip(*read_keep_keys(tmp_path / "keep", ("key", "group_size")).to_pydict().values(), strict=True)
    )
    assert sizes[keys[20]] == 4 and sizes[keys[11]] == 2 and sizes[keys[0]] == 1


def test_threshold_one_removes_nothing_not_even_identical_images(tmp_path):
    planted_folder(tmp_path / "scores")
    image = unit(np.random.default_rng(2).normal(size=(4, D)))
    write_scores(tmp_path / "scores", "00009.tar", ["000090000", "000090001"], image[[0, 0]], image[[1, 2]])
    summary = run(tmp_path / "scores", tmp_path / "keep", 1.0)
    assert summary.removed == 0 and summary.kept == summary.rows_in
    assert run(tmp_path / "scores", tmp_path / "keep", 0.999).removed >= 1  # the identical pair


@pytest.mark.parametrize("threshold", [0.8, 0.95])
def test_bucketed_streaming_result_equals_the_dense_all_pairs_twin(tmp_path, threshold):
    planted_folder(tmp_path / "scores")
    # One cluster: every pair is compared, so this is global all-pairs dedup, in uneven tiles of 7 rows.
    run(tmp_path / "scores", tmp_path / "one", threshold, clusters=1, block=7)
    assert kept_keys(tmp_path / "one") == dense_keep(tmp_path / "scores", threshold)
    # Six clusters spilled to three buckets: the same as all pairs masked to pairs within a cluster.
    summary = run(tmp_path / "scores", tmp_path / "six", threshold, clusters=6, bucket_rows=60, block=7)
    assert summary.rows_in < 180 and summary.not_ok == 180 - summary.rows_in
    table = open_score_folder(tmp_path / "scores").read_columns(["image_emb"], eligible_only=True)
    rows = normalise(torch.from_numpy(embeddings_numpy(table["image_emb"])))
    centroids = kmeans(rows, 6, torch.Generator().manual_seed(0))  # all rows: fewer than the sample size
    clusters = nearest(rows, centroids).numpy()
    assert kept_keys(tmp_path / "six") == dense_keep(tmp_path / "scores", threshold, clusters)
    assert set(kept_keys(tmp_path / "one")) <= set(kept_keys(tmp_path / "six"))  # fewer pairs compared


def test_only_eligible_rows_are_compared_and_kept(tmp_path):
    """Rows scored ok but with a NaN embedding (files from before score refused them) are not eligible: never
    grouped with their copies, never in the keep-manifest, counted with the rows not ok."""
    rng = np.random.default_rng(4)
    image = unit(rng.normal(size=(20, D)))
    text = unit(rng.normal(size=(20, D)))
    image[[5, 6]] = image[4]  # three identical images ...
    image[6, 0] = np.nan  # ... one of them embedded as NaN
    status = [OK] * 19 + ["undecodable_image"]
    keys = [f"0000{r:04d}" for r in range(20)]
    write_scores(tmp_path / "scores", "00000.tar", keys, image, text, status=status)
    summary = run(tmp_path / "scores", tmp_path / "keep", 0.99, clusters=1)
    assert (summary.rows_seen, summary.rows_in, summary.not_ok) == (20, 18, 2)
    assert (summary.groups, summary.largest_group, summary.removed) == (1, 2, 1)
    kept = kept_keys(tmp_path / "keep")
    assert keys[6] not in kept and keys[19] not in kept and len(kept) == 17
    assert len({keys[4], keys[5]} & set(kept)) == 1


def test_grouping_folds_its_pairs_and_tiles_without_changing_the_groups():
    rng = np.random.default_rng(3)
    bases = unit(rng.normal(size=(5, D)))
    rows = normalise(torch.from_numpy(bases[rng.integers(5, size=90)] + 0.2 * rng.normal(size=(90, D))))
    dense = (rows @ rows.T).numpy() > 0.9
    _, expected = connected_components(dense, directed=False)
    for block, max_edges in [(4096, 1 << 20), (11, 3), (1, 1)]:
        groups = near_duplicate_groups(rows, 0.9, block=block, max_edges=max_edges)
        same = groups[:, None] == groups[None, :]
        assert (same == (expected[:, None] == expected[None, :])).all()
        assert groups[0] == 0 and (np.diff(np.maximum.accumulate(groups)) <= 1).all()  # numbered by first row
    assert keepers(np.array([0, 0, 1, 0, 1]), np.array([0.1, 0.3, 0.2, 0.3, 0.1])).tolist() == [
        False,
        True,
        True,
        False,
        False,
    ]


def test_rerun_overwrites_atomically_and_the_same_settings_give_the_same_bytes(tmp_path):
    planted_folder(tmp_path / "scores")
    first = run(tmp_path / "scores", tmp_path / "keep", 0.8, seed=5)
    before = keep_file(tmp_path / "keep").read_bytes()
    run(tmp_path / "scores", tmp_path / "keep", 0.8, seed=5)
    assert keep_file(tmp_path / "keep").read_bytes() == before
    second = run(tmp_path / "scores", tmp_path / "keep", 0.95, seed=5)
    assert sorted(p.name for p in (tmp_path / "keep").iterdir()) == ["keep.parquet", "summary.json"]
    assert second.kept >= first.kept and len(kept_keys(tmp_path / "keep")) == second.kept
    recorded = json.loads((tmp_path / "keep/summary.json").read_text())
    assert recorded["threshold"] == 0.95 and recorded["kept"] == second.kept
    assert keep_metadata(tmp_path / "keep")["curate.threshold"] == "0.95"
    assert sum(recorded["removed_by_shard"].values()) == recorded["removed"]
    assert recorded["rows_in"] == recorded["kept"] + recorded["removed"]


def test_cli_prints_one_summary_line_and_refuses_bad_input_in_one_line(tmp_path):
    planted_folder(tmp_path / "scores")
    result = run_cli(
        "dedup",
        str(tmp_path / "scores"),
        "-o",
        str(tmp_path / "keep"),
        "--threshold",
        "0.9",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "keep/summary.json").read_text())
    assert result.stdout.strip() == (
        f"kept {summary['kept']} of {summary['rows_in']} "
        f"(removed {summary['removed']} in {summary['groups']} "
        f"groups; {summary['clusters']} clusters, T 0.9) → {tmp_path / 'keep'}"
    )
    assert summary["removed"] < summary["rows_in"] / 2 and "warning" not in result.stderr
    # a threshold that chains most rows into a few groups: done, with a warning about the reference
    result = run_cli("dedup", str(tmp_path / "scores"), "-o", str(tmp_path / "low"), "--threshold", "0.1")
    summary = json.loads((tmp_path / "low/summary.json").read_text())
    assert result.returncode == 0 and summary["removed"] > summary["rows_in"] / 2
    assert "warning: removed " in result.stderr and "dedup_recall.sql" in result.stderr
    (tmp_path / "empty").mkdir()
    for args, message in [
        ([str(tmp_path / "empty"), "--threshold", "0.9"], "holds no score files"),
        ([str(tmp_path / "nope"), "--threshold", "0.9"], "does not exist"),
        ([str(tmp_path / "scores"), "--threshold", "0"], "--threshold must be in (0, 1]"),
        ([str(tmp_path / "scores"), "--threshold", "1.5"], "--threshold must be in (0, 1]"),
        (
            [str(tmp_path / "scores"), "--threshold", "0.9", "--clusters", "0"],
            "--clusters must be at least 1",
        ),
    ]:
        result = run_cli("dedup", *args, "-o", str(tmp_path / "bad"))
        assert result.returncode == 1 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(CurateError, match="no keep-manifest"):
        read_keep_keys(tmp_path / "bad")


def test_a_synth_crawls_planted_duplicates_are_found(tmp_path, small_synth):
    """Recall against synth's `duplicate_of`: a planted duplicate is found when it and its source are not
    both kept. A random-init model sees exact copies as identical (the same pixels), so their recall is 1;
    near copies and unrelated images it tells apart poorly, so precision is not asserted here (docs/results
    reports both for a trained reference)."""
    torch.manual_seed(0)
    config = ScoreConfig(model="siglip-tiny", allow_random_init=True, workers=0, batch_size=100)
    score_shards(f"{small_synth}/web/{{00000..00001}}.tar", str(tmp_path / "scores"), config)  # half: faster
    scored = open_score_folder(tmp_path / "scores").read_columns(["key", "sha256"], eligible_only=True)
    digest = dict(zip(*scored.to_pydict().values(), strict=True))  # of the image bytes
    shards = pa.concat_tables(pq.read_table(p) for p in sorted(Path(small_synth, "web").glob("*.parquet")))
    planted = [(r["key"], r["duplicate_of"]) for r in shards.to_pylist() if r["duplicate_of"] is not None]
    assert len(planted) == 28
    planted = [(k, s) for k, s in planted if k in digest and s in digest]  # both scored
    exact = [(k, s) for k, s in planted if digest[k] == digest[s]]  # the same pixels
    assert 0 < len(exact) < len(planted)
    removed = {}
    for threshold in (0.99, 0.999):
        run(tmp_path / "scores", tmp_path / f"keep{threshold}", threshold)
        kept = set(kept_keys(tmp_path / f"keep{threshold}"))
        assert all(not (k in kept and s in kept) for k, s in exact), threshold  # exact-copy recall 1
        removed[threshold] = len(digest) - len(kept)
    assert 0 < removed[0.999] <= removed[0.99]  # a higher threshold only splits groups
    # examples/dedup_recall.sql, the recipe in docs/reference/commands.md, counts what this test counts
    sources = {s for _, s in planted}
    clean = [r["key"] for r in shards.to_pylist() if r["noise"] == "none" and r["key"] in digest]
    clean = [k for k in clean if k not in sources]
    sql = (Path(__file__).parents[1] / "examples/dedup_recall.sql").read_text()
    folders = [
        "--keep",
        tmp_path / "keep0.99",
        "--scores",
        tmp_path / "scores",
        "--shards",
        f"{small_synth}/web",
    ]
    result = run_cli("query", *map(str, folders), "--format", "csv", "--", sql)
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.strip().splitlines()
    counts = dict(zip(header.split(","), map(int, row.split(",")), strict=True))
    kept = set(kept_keys(tmp_path / "keep0.99"))
    assert counts == {
        "ok": len(digest),
        "removed": removed[0.99],
        "planted": len(planted),
        "planted_found": sum(not (k in kept and s in kept) for k, s in planted),
        "unique_clean": len(clean),
        "clean_removed": sum(k not in kept for k in clean),
    }


def test_kmeans_on_a_seeded_sample_is_deterministic_and_recorded(tmp_path):
    planted_folder(tmp_path / "scores")
    first = run(tmp_path / "scores", tmp_path / "a", 0.9, sample=50, seed=3)
    second = run(tmp_path / "scores", tmp_path / "b", 0.9, sample=50, seed=3)
    assert first.sample == 50 and first.clusters == 2  # √N capped at 20 sample rows per centroid
    assert keep_file(tmp_path / "a").read_bytes() == keep_file(tmp_path / "b").read_bytes()
    assert (first.kept, first.groups) == (second.kept, second.groups)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_the_same_rows_are_kept_as_on_the_cpu(tmp_path):
    # one cluster, so k-means's float order cannot move a row between clusters: only the pairs decide
    planted_folder(tmp_path / "scores")
    cpu = run(tmp_path / "scores", tmp_path / "cpu", 0.9, clusters=1)
    cuda = dedup(
        str(tmp_path / "scores"), str(tmp_path / "cuda"), DedupConfig(0.9, clusters=1, device="cuda")
    )
    assert cuda.device.startswith("cuda") and cuda.removed == cpu.removed > 0
    assert kept_keys(tmp_path / "cuda") == kept_keys(tmp_path / "cpu")
