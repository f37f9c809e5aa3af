"""A hostile but fair user, round two: inputs checked by what they hold, not by their paths.

Artefacts mixed from two runs (a selection's parts, a manifest or a reference re-made under a resumed run)
and fields a reader trusts (null keys, non-finite or mis-sized embeddings, undecodable logs). Each case
asserts the exit code, the one line on stderr, and that nothing already written changed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from builders import unit, write_keep_rows, write_manifest_rows, write_scores
from conftest import run_cli
from test_hostile import TINY_TRAIN, assert_one_line_error

from curate.score.schema import OK, ScoreMetadata, score_file, write_score_file
from curate.select import SelectConfig, select

DIM = 8


def planted(folder: Path, shards: int = 3, per_shard: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for s in range(shards):
        keys = [f"{s:05d}{r:04d}" for r in range(per_shard)]
        image = unit(rng.normal(size=(per_shard, DIM)))
        text = unit(image + 0.5 * rng.normal(size=(per_shard, DIM)))
        write_scores(folder, f"{s:05d}.tar", keys, image, text)
    return folder


def snapshot(*folders: Path) -> dict[str, bytes]:
    """Every file under `folders`, by path: what a refused command must leave as it was."""
    return {
        str(p): p.read_bytes() for folder in folders for p in sorted(Path(folder).rglob("*")) if p.is_file()
    }


# ------------------------------------------------------------------------------ identity by content


@pytest.fixture(scope="module")
def mixed_parts(tmp_path_factory) -> Path:
    """Parts 0 and 2 of a 3-partition selection with seed 0, part 1 copied in from one with seed 1."""
    root = tmp_path_factory.mktemp("parts")
    scores = planted(root / "scores")
    for seed, name in ((0, "first"), (1, "second")):
        config = SelectConfig(ratio=0.5, super_batch=16, chunks=2, partitions=3, seed=seed, device="cpu")
        select(str(scores), str(root / name), config)
    shutil.copy(root / "second" / "part-00001.parquet", root / "first" / "part-00001.parquet")
    return root / "first"


@pytest.mark.parametrize(
    "command",
    [
        ["query", "SELECT count(*) FROM manifest", "--manifest"],
        ["export", "--shards", "/nonexistent", "-o", "{tmp}/out"],
        ["train", "--manifest", "{manifest}", "/nonexistent", "--model", "siglip-tiny", *TINY_TRAIN, "-o"],
        ["report", "--manifest"],
    ],
    ids=["query", "export", "train", "report"],
)
def test_parts_of_two_selections_in_one_folder_are_refused_by_every_reader(mixed_parts, command, tmp_path):
    args = [a.format(tmp=tmp_path, manifest=mixed_parts) for a in command]
    if command[0] == "export":
        args.insert(1, str(mixed_parts))
    elif command[0] == "train":
        args.append(str(tmp_path / "run"))
    elif command[0] == "report":
        args += [str(mixed_parts), "-o", str(tmp_path / "report")]
    else:
        args.append(str(mixed_parts))
    before = snapshot(mixed_parts)
    result = run_cli(*args)
    assert_one_line_error(result, "part-00001.parquet is of another selection than part-00000.parquet")
    assert snapshot(mixed_parts) == before


def _selection_ids(folder: Path) -> set[bytes]:
    return {pq.read_schema(p).metadata[b"curate.selection"] for p in sorted(folder.glob("part-*"))}


def test_a_selection_id_is_the_same_for_the_same_inputs_and_another_for_scores_made_anew(tmp_path):
    scores = planted(tmp_path / "scores")
    config = SelectConfig(ratio=0.5, super_batch=16, chunks=2, partitions=3, device="cpu")
    select(str(scores), str(tmp_path / "m"), config)
    select(str(scores), str(tmp_path / "again"), config)
    ids = _selection_ids(tmp_path / "m")
    assert len(ids) == 1 and _selection_ids(tmp_path / "again") == ids
    for path in scores.glob("*.parquet"):  # the crawl scored anew in place: other rows
        path.unlink()
    planted(scores, per_shard=41)
    select(str(scores), str(tmp_path / "m2"), config)
    assert len(_selection_ids(tmp_path / "m2")) == 1 and _selection_ids(tmp_path / "m2") != ids


@pytest.fixture(scope="module")
def trained_on_a_manifest(scores, small_synth, tmp_path_factory) -> tuple[Path, Path]:
    """A run of 2 steps (a checkpoint at each) on a selection of `scores`, which is then selected anew into
    the same folder with another seed."""
    root = tmp_path_factory.mktemp("resume")
    manifest, run = root / "manifest", root / "run"
    select_args = [
        "select",
        scores,
        "-o",
        str(manifest),
        "--ratio",
        "0.5",
        "--batch-size",
        "8",
        "--chunks",
        "2",
    ]
    assert run_cli(*select_args, "--seed", "0").returncode == 0
    train = run_cli(
        "train", "--manifest", str(manifest), f"{small_synth}/web/00000.tar", "--model", "siglip-tiny",
        *TINY_TRAIN, "--save-every", "1", "-o", str(run),
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    assert run_cli(*select_args, "--seed", "1").returncode == 0
    return manifest, run


def test_a_run_resumed_on_a_manifest_selected_anew_is_refused(trained_on_a_manifest, small_synth):
    manifest, run = trained_on_a_manifest
    before = snapshot(run)
    result = run_cli(
        "train", "--manifest", str(manifest), f"{small_synth}/web/00000.tar", "--model", "siglip-tiny",
        *TINY_TRAIN, "--save-every", "1", "--resume", "-o", str(run),
    )  # fmt: skip
    assert_one_line_error(result, "--resume: --manifest holds other data than", "at step 2")
    assert snapshot(run) == before


def test_an_online_run_resumed_on_reference_scores_made_anew_is_refused(small_synth, tmp_path):
    shard = f"{small_synth}/web/00000.tar"
    reference = tmp_path / "reference"
    score = ["score", shard, "--model", "siglip-tiny", "--allow-random-init", "-o", str(reference)]
    assert run_cli(*score, "--seed", "0").returncode == 0
    online = ["--online-jest", "--ref", str(reference), "--ratio", "0.5", "--chunks", "2"]
    run = tmp_path / "run"
    train = ["train", shard, "--model", "siglip-tiny", *TINY_TRAIN, *online, "-o", str(run)]
    first = run_cli(*train)
    assert first.returncode == 0, first.stderr
    rescored = run_cli(*score, "--seed", "1", "--overwrite")  # another random init: other weights
    assert rescored.returncode == 0, rescored.stderr
    before = snapshot(run)
    result = run_cli(*train, "--resume")
    assert_one_line_error(result, "--resume: --ref holds other data than")
    assert snapshot(run) == before


# ------------------------------------------------------------------------- fields checked where they enter


def test_a_keep_file_with_null_keys_is_refused_by_select(tmp_path):
    scores = planted(tmp_path / "scores")
    table = pq.read_table(scores / "00000.parquet")
    keys = table["key"].to_pylist()
    keys[3] = None
    write_keep_rows(tmp_path / "keep", table, keys)
    result = run_cli(
        "select", str(scores), "-o", str(tmp_path / "m"), "--ratio", "0.5", "--keep", str(tmp_path / "keep")
    )
    assert_one_line_error(result, "keep.parquet: 1 rows with a null key", "curate dedup")
    assert not (tmp_path / "m" / "manifest.parquet").exists()


def _nonfinite_scores(folder: Path, column: str) -> Path:
    """Planted scores of which one row with status ok has a NaN embedding in `column` and a finite
    similarity, as a foreign writer might leave it."""
    planted(folder)
    rng = np.random.default_rng(5)
    image = unit(rng.normal(size=(40, DIM)))
    text = image.copy()
    (image if column == "image_emb" else text)[7] = np.nan
    metadata = ScoreMetadata("planted", "", 10.0, -10.0, DIM, 32, "test").as_strings()
    keys = [f"00001{r:04d}" for r in range(40)]
    path = score_file(folder, "00001.tar")
    similarity = np.ones(40, np.float32)
    write_score_file(path, "00001.tar", keys, keys, [OK] * 40, image, text, similarity, metadata)
    # the writer stores it as given only when it is ok: check the file holds the NaN the test is about
    stored = pq.read_table(path, columns=[column])[column][7].as_py()
    assert any(v != v for v in stored)
    return path


# select reads both embeddings (the case: a NaN text embedding), dedup the image's alone
@pytest.mark.parametrize(
    "command, column", [("select", "text_emb"), ("select", "image_emb"), ("dedup", "image_emb")]
)
def test_a_non_finite_embedding_in_an_ok_row_is_refused_naming_its_file(tmp_path, command, column):
    path = _nonfinite_scores(tmp_path / "scores", column)
    options = ["--ratio", "0.5"] if command == "select" else ["--threshold", "0.9"]
    result = run_cli(command, str(tmp_path / "scores"), *options, "-o", str(tmp_path / "out"))
    # dedup fails mid-way through its progress lines: its last line is the error
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: score file ") and str(path) in last and "non-finite embedding" in last
    assert not any((tmp_path / "out").glob("*.parquet"))


def test_embeddings_wider_than_their_metadata_says_are_refused(tmp_path):
    scores = planted(tmp_path / "scores")
    path = scores / "00001.parquet"
    table = pq.read_table(path)
    metadata = dict(table.schema.metadata)
    metadata[b"curate.embed_dim"] = b"16"
    pq.write_table(table.replace_schema_metadata(metadata), path)
    for other in ("00000.parquet", "00002.parquet"):  # one model in the folder: every file says 16
        t = pq.read_table(scores / other)
        pq.write_table(t.replace_schema_metadata(metadata), scores / other)
    result = run_cli("select", str(scores), "--ratio", "0.5", "-o", str(tmp_path / "m"))
    assert_one_line_error(result, "embeddings of width 8, but its metadata says 16")


@pytest.mark.parametrize("column", ["key", "batch"])
@pytest.mark.parametrize("command", ["query", "export"])
def test_a_manifest_with_null_keys_or_batches_is_refused(tmp_path, column, command):
    keys: list = ["a", "b", "c", "d"]
    batches: list = [0, 0, 1, 1]
    (keys if column == "key" else batches)[2] = None
    folder = write_manifest_rows(tmp_path / "m", keys, batches=batches)
    args = (
        ["query", "SELECT count(*) FROM manifest", "--manifest", str(folder)]
        if command == "query"
        else ["export", str(folder), "--shards", str(tmp_path), "-o", str(tmp_path / "out")]
    )
    result = run_cli(*args)
    if command == "query":  # DuckDB reads the files itself: the view shows the nulls, never hides them
        assert result.returncode == 0, result.stderr
        return
    assert_one_line_error(result, f"1 rows with a null {column}", "select anew")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*.tar"))


def test_a_metrics_log_that_is_not_utf8_is_one_line(tmp_path, small_synth):
    run = tmp_path / "run"
    train = run_cli(
        "train", f"{small_synth}/web/00000.tar", "--model", "siglip-tiny", *TINY_TRAIN, "-o", str(run)
    )
    assert train.returncode == 0, train.stderr
    metrics = run / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes() + b'{"step": 3, "note": "\xff\xfe"}\n')
    before = snapshot(run)
    result = run_cli("report", str(run), "-o", str(tmp_path / "report"))
    assert_one_line_error(result, "metrics.jsonl is not UTF-8 text (byte")
    assert snapshot(run) == before


@pytest.mark.parametrize("content", [b"\xff\xfe{}", b"[1, 2]", b"{not json"], ids=["latin", "list", "broken"])
def test_a_run_config_that_is_not_a_json_object_is_one_line(tmp_path, small_synth, content):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_bytes(content)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    result = run_cli("report", str(run), "-o", str(tmp_path / "report"))
    assert_one_line_error(result, "config.json", "a curate train config")


def test_a_keep_file_of_scores_since_made_anew_in_place_is_refused(tmp_path):
    scores = planted(tmp_path / "scores")
    keep, out = tmp_path / "keep", tmp_path / "m"
    assert run_cli("dedup", str(scores), "--threshold", "0.99", "-o", str(keep)).returncode == 0
    select = ["select", str(scores), "--ratio", "0.5", "--chunks", "2", "--keep", str(keep), "-o", str(out)]
    assert run_cli(*select).returncode == 0  # the scores it was made from, as they were
    for path in scores.glob("*.parquet"):  # the crawl scored anew in place
        path.unlink()
    planted(scores, per_shard=41, seed=2)
    before = snapshot(out, keep)
    result = run_cli(*select)
    assert_one_line_error(result, f"--keep {keep} was made from {scores} as it was before", "dedup them anew")
    assert snapshot(out, keep) == before


@pytest.mark.parametrize("command", ["train", "export"])
def test_a_manifest_repeating_a_key_within_a_batch_is_refused(tmp_path, small_synth, command):
    """Found by hand beyond the cases above: `train --manifest` trained such a batch one sample short,
    exit 0. The format says a key never repeats within a batch (across batches, passes repeat it)."""
    folder = write_manifest_rows(tmp_path / "m", ["a", "b", "a", "c", "a", "d"], batches=[0, 0, 0, 1, 2, 2])
    args = {
        "train": [
            "train",
            f"{small_synth}/web",
            "--manifest",
            str(folder),
            *TINY_TRAIN,
            "-o",
            str(tmp_path / "r"),
        ],
        "export": ["export", str(folder), "--shards", f"{small_synth}/web", "-o", str(tmp_path / "r")],
    }[command]
    result = run_cli(*args)
    assert_one_line_error(result, "key a repeats within batch 0 (1 repeats in all", "select anew")
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("*.pt"))


@pytest.mark.parametrize("command", ["select", "dedup"])
def test_a_score_row_with_a_null_key_is_refused_naming_its_file(tmp_path, command):
    """Found by hand: select wrote it into a manifest (which every reader then refused)."""
    scores = planted(tmp_path / "scores")
    path = scores / "00001.parquet"
    table = pq.read_table(path)
    keys = table["key"].to_pylist()
    keys[5] = None
    table = table.set_column(table.schema.get_field_index("key"), "key", pa.array(keys, pa.string()))
    pq.write_table(table, path)
    options = ["--ratio", "0.5", "--chunks", "2"] if command == "select" else ["--threshold", "0.9"]
    result = run_cli(command, str(scores), *options, "-o", str(tmp_path / "out"))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("error: score file ")
        and str(path) in last
        and "1 eligible rows with a null key" in last
    )
    assert not any((tmp_path / "out").glob("*.parquet"))
