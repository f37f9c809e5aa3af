import dataclasses
import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from builders import unit, write_scores
from conftest import run_cli
from PIL import Image

from curate.errors import CurateError
from curate.models import load_model, save_checkpoint
from curate.score import OK, ScoreConfig, ScoreMetadata, embeddings_numpy, score_shards
from curate.score.schema import (
    ELIGIBLE_SQL,
    comparable,
    eligible_rows,
    open_score_folder,
    read_scoring_cost,
)
from curate.shards import ReadStats, iter_members, iter_samples, iter_shard
from curate.shards.schema import IMAGE_EXTENSIONS

TINY = ScoreConfig(model="siglip-tiny", allow_random_init=True, workers=0, batch_size=64)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_model("siglip-tiny", allow_random_init=True)


def test_score_files_have_the_design_schema_and_metadata(tmp_path, small_synth, tiny):
    summary = score_shards(f"{small_synth}/web", str(tmp_path), TINY, model=tiny)
    assert summary.shards_done == 4 and summary.ok + sum(summary.failed.values()) == 400
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"0000{i}.parquet" for i in range(4)]
    table = pq.read_table(tmp_path / "00000.parquet")
    # the columns of docs/reference/formats.md, "Scores"; sha256 is the digest that export checks it copies
    columns = ["key", "shard", "caption", "image_emb", "text_emb", "similarity", "status", "sha256"]
    assert table.schema.names == columns
    images_in_tar = {
        key: next(members[ext] for ext in IMAGE_EXTENSIONS if ext in members)
        for key, members in iter_members(f"{small_synth}/web/00000.tar", ReadStats())
    }
    assert table.column("sha256").to_pylist() == [
        hashlib.sha256(images_in_tar[key]).hexdigest() for key in table.column("key").to_pylist()
    ]
    assert str(table.schema.field("image_emb").type) == "fixed_size_list<element: halffloat>[128]"
    meta = ScoreMetadata.read(tmp_path / "00000.parquet")
    assert (meta.model, meta.embed_dim, meta.image_size) == ("siglip-tiny", 128, 32)
    assert (meta.logit_scale, meta.logit_bias) == (10.0, -10.0)
    # What each file cost: one forward per embedded (ok) sample, and its share of the run's wall time.
    files = sorted(tmp_path.glob("*.parquet"))
    for file in files:
        ok_rows = pq.read_table(file, columns=["status"]).column("status").to_pylist().count(OK)
        raw = pq.read_schema(file).metadata
        assert float(raw[b"curate.flops"]) == pytest.approx(ok_rows * tiny.forward_flops())
        assert float(raw[b"curate.seconds"]) > 0
        assert raw[b"curate.checkpoint"] == b"" and raw[b"curate.checkpoint_step"] == b""  # not a checkpoint
    cost = read_scoring_cost(tmp_path)
    assert cost.flops == pytest.approx(summary.ok * tiny.forward_flops()) and cost.uncounted == 0
    assert cost.files == 4 and cost.seconds > 0 and cost.checkpoint == ""

    shard_keys = pq.read_table(f"{small_synth}/web/00000.parquet").column("key").to_pylist()
    assert table.column("key").to_pylist() == shard_keys  # every sample, in shard order
    assert set(table.column("shard").to_pylist()) == {"00000.tar"}
    ok = np.array([s == OK for s in table.column("status").to_pylist()])
    images, texts = embeddings_numpy(table["image_emb"]), embeddings_numpy(table["text_emb"])
    norms = np.linalg.norm(images[ok].astype(np.float32), axis=1)
    assert np.allclose(norms, 1.0, atol=2e-3) and np.allclose(
        np.linalg.norm(texts[ok].astype(np.float32), axis=1), 1.0, atol=2e-3
    )
    cosine = (images[ok].astype(np.float32) * texts[ok].astype(np.float32)).sum(1)
    assert np.allclose(table.column("similarity").to_numpy(zero_copy_only=False)[ok], cosine, atol=2e-3)


def test_undecodable_images_become_rows_with_a_status_and_no_embedding(tmp_path, small_synth, tiny):
    score_shards(f"{small_synth}/web", str(tmp_path), TINY, model=tiny)
    rows = pq.read_table(tmp_path).to_pylist()
    noise = {
        r["key"]: r["noise"]
        for r in pq.read_table(
            sorted(Path(small_synth, "web").glob("*.parquet")), columns=["key", "noise"]
        ).to_pylist()
    }
    failed = [r for r in rows if r["status"] != OK]
    assert failed and all(r["status"] == "undecodable_image" for r in failed)
    assert {r["key"] for r in failed} == {k for k, n in noise.items() if n == "corrupt"}
    # A zero row, never a null list: older Parquet readers (pyarrow before apache/arrow#35692's fix) cannot
    # read a null fixed-size list at all.
    assert all(r["image_emb"] == [0.0] * tiny.embed_dim and r["similarity"] is None for r in failed)
    assert all(
        pq.read_table(file).column(name).null_count == 0
        for file in tmp_path.glob("*.parquet")
        for name in ("image_emb", "text_emb")
    )


def test_bad_samples_are_reported_per_sample_and_damaged_tars_are_not_scored(tmp_path, tiny):
    shards = tmp_path / "shards"
    shards.mkdir()
    buffer = io.BytesIO()
    Image.new("L", (20, 20), 100).save(buffer, format="PNG")  # grayscale: must be converted, not crash
    with tarfile.open(shards / "00000.tar", "w") as tar:
        image = buffer.getvalue()
        members = [("k1.png", image), ("k1.txt", b"a grey square"), ("k2.png", image), ("k2.txt", b"  ")]
        for name, data in [*members, ("k3.txt", b"no image"), ("sub/k4.png", image), ("sub/k4.txt", b"x")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    whole = (shards / "00000.tar").read_bytes()
    (shards / "00001.tar").write_bytes(whole[: 2048 + 600])  # k1 (two 1 KiB members) whole, k2 cut
    summary = score_shards(str(shards), str(tmp_path / "scores"), TINY, model=tiny)
    first = pq.read_table(tmp_path / "scores/00000.parquet").to_pylist()
    assert [(r["key"], r["status"]) for r in first] == [
        ("k1", "ok"),
        ("k2", "empty_caption"),
        ("k3", "missing_image"),
        ("sub/k4", "unsafe_key"),  # refused where it enters: export would write it outside its folder
    ]
    assert not (tmp_path / "scores/00001.parquet").exists()  # not done: a rerun retries it
    assert [shard for shard, _ in summary.damaged] == ["00001.tar"]
    assert summary.ok == 1 and summary.failed == {"empty_caption": 1, "missing_image": 1, "unsafe_key": 1}
    with pytest.raises(CurateError, match="1 shard.*00001.tar.*--keep-going"):
        summary.refuse_damage()


def _cut_inside_a_header(tar: Path, member: int) -> None:
    """Cut `tar` 100 bytes into the header of its `member`-th member: tarfile then stops quietly, as if the
    archive ended there."""
    with tarfile.open(tar) as whole:
        offset = whole.getmembers()[member].offset
    tar.write_bytes(tar.read_bytes()[: offset + 100])


def test_a_damaged_shard_fails_loudly_is_never_marked_done_and_is_retried(tmp_path, small_synth):
    web = tmp_path / "web"
    shutil.copytree(f"{small_synth}/web", web)
    pristine = {name: (web / name).read_bytes() for name in ("00001.tar", "00002.tar", "00003.tar")}
    _cut_inside_a_header(web / "00001.tar", 30)
    (web / "00002.tar").write_bytes(b"")  # what a killed img2dataset leaves
    (web / "00003.tar").write_bytes(b"not a tar " * 200)
    args = ["score", str(web), "-o", str(tmp_path / "scores"), "--model", "siglip-tiny"]
    args += ["--allow-random-init", "--workers", "0"]
    result = run_cli(*args)
    assert result.returncode == 1
    assert "3 shard(s) could not be read whole" in result.stderr and "Traceback" not in result.stderr
    assert (
        "00001.tar (no end-of-archive marker" in result.stderr and "00002.tar (empty file)" in result.stderr
    )
    assert "scored 1 shards, 3 damaged (not scored)" in result.stdout
    assert sorted(p.name for p in (tmp_path / "scores").iterdir()) == ["00000.parquet"]
    assert run_cli(*args, "--keep-going").returncode == 0  # the same damage, accepted: still not scored
    assert sorted(p.name for p in (tmp_path / "scores").iterdir()) == ["00000.parquet"]

    for name, data in pristine.items():  # repaired: the rerun scores exactly those shards
        (web / name).write_bytes(data)
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "scored 3 shards, 1 already scored (skipped)" in result.stdout


def test_a_tar_shorter_than_its_stats_counts_is_damaged(tmp_path, small_synth):
    """A whole-looking tar (it ends properly) that holds fewer samples than its _stats.json counts."""
    web = tmp_path / "web"
    web.mkdir()
    with (
        tarfile.open(f"{small_synth}/web/00000.tar") as source,
        tarfile.open(web / "00000.tar", "w") as short,
    ):
        for info in source.getmembers()[:30]:
            short.addfile(info, source.extractfile(info))
    shutil.copy(f"{small_synth}/web/00000_stats.json", web)
    stats = ReadStats()
    read = list(iter_shard(str(web / "00000.tar"), stats, check_images=False))
    assert len(read) == 10  # 3 members per sample
    assert stats.skipped == {"truncated_tar": 90}
    assert stats.bad_shards == [("00000.tar", "holds 10 of the 100 samples its _stats.json counts")]


def test_same_model_and_data_give_the_same_embeddings_and_resume_equals_one_run(tmp_path, small_synth, tiny):
    score_shards(f"{small_synth}/web", str(tmp_path / "whole"), TINY, model=tiny)

    class Killed(Exception):
        pass

    def kill_in_third_shard(done, total):
        if done > 250:
            raise Killed

    with pytest.raises(Killed):
        score_shards(
            f"{small_synth}/web", str(tmp_path / "resumed"), TINY, progress=kill_in_third_shard, model=tiny
        )
    written = sorted(p.name for p in (tmp_path / "resumed").iterdir())
    assert written == ["00000.parquet", "00001.parquet"]  # complete files only, no temporary left over
    summary = score_shards(f"{small_synth}/web", str(tmp_path / "resumed"), TINY, model=tiny)
    assert (summary.shards_skipped, summary.shards_done) == (2, 2)
    for name in [f"0000{i}.parquet" for i in range(4)]:
        assert pq.read_table(tmp_path / "whole" / name).equals(pq.read_table(tmp_path / "resumed" / name))


def test_resuming_with_another_model_is_refused(tmp_path, small_synth, tiny):
    score_shards(f"{small_synth}/web/00000.tar", str(tmp_path), TINY, model=tiny)
    other = ScoreConfig(model="siglip-small", allow_random_init=True, workers=0)
    with pytest.raises(CurateError, match="holds scores by --model siglip-tiny"):
        score_shards(f"{small_synth}/web", str(tmp_path), other)


def test_a_checkpoint_replaced_behind_the_same_path_is_refused(tmp_path, small_synth, tiny):
    checkpoint = tmp_path / "latest.pt"
    save_checkpoint(checkpoint, tiny.open_clip_name, tiny.config, tiny.module.state_dict(), step=1)
    config = ScoreConfig(model=str(checkpoint), workers=0, batch_size=64)
    score_shards(f"{small_synth}/web/00000.tar", str(tmp_path / "scores"), config)
    weights = ScoreMetadata.read(tmp_path / "scores/00000.parquet").weights
    assert weights == tiny.weights_fingerprint() and len(weights) == 64
    other = load_model("siglip-tiny", allow_random_init=True, seed=1)
    save_checkpoint(checkpoint, other.open_clip_name, other.config, other.module.state_dict(), step=1)
    with pytest.raises(CurateError, match="other weights .* was the checkpoint replaced"):
        score_shards(f"{small_synth}/web", str(tmp_path / "scores"), config)
    assert sorted(p.name for p in (tmp_path / "scores").iterdir()) == ["00000.parquet"]  # nothing mixed in


def test_a_model_that_embeds_nan_writes_failures_never_ok_rows(tmp_path, small_synth):
    broken = load_model("siglip-tiny", allow_random_init=True)
    with torch.no_grad():
        broken.module.visual.proj.fill_(float("nan"))  # what a diverged checkpoint holds
    summary = score_shards(f"{small_synth}/web/00000.tar", str(tmp_path), TINY, model=broken)
    table = pq.read_table(tmp_path / "00000.parquet")
    statuses = set(table.column("status").to_pylist())
    assert "ok" not in statuses and "nonfinite_embedding" in statuses and summary.ok == 0
    decodable = table.num_rows - table.column("status").to_pylist().count("undecodable_image")
    assert summary.failed["nonfinite_embedding"] == decodable == 100
    assert np.isfinite(embeddings_numpy(table["image_emb"]).astype(np.float32)).all()  # zeros, not NaN


def test_a_trained_checkpoint_scores_from_the_command_line_with_workers(tmp_path, small_synth, tiny):
    checkpoint = tmp_path / "latest.pt"
    save_checkpoint(checkpoint, tiny.open_clip_name, tiny.config, tiny.module.state_dict(), step=1)
    result = run_cli("score", f"{small_synth}/web/{{00000..00001}}.tar", "-o", str(tmp_path / "scores"),
                     "--model", str(checkpoint), "--workers", "2", "--batch-size", "32")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("scored 2 shards: ")
    assert "samples/s on cpu fp32" in result.stdout
    assert ScoreMetadata.read(tmp_path / "scores/00001.parquet").model == str(checkpoint)
    cost = read_scoring_cost(tmp_path / "scores")  # where a learner's cost goes on upstream
    assert (cost.checkpoint, cost.checkpoint_step) == (str(checkpoint.resolve()), 1)
    reference = tmp_path / "in-process"
    score_shards(f"{small_synth}/web/{{00000..00001}}.tar", str(reference), TINY, model=tiny)
    for name in ("00000.parquet", "00001.parquet"):
        ours = pq.read_table(tmp_path / "scores" / name)
        theirs = pq.read_table(reference / name)
        assert ours.column("key").equals(theirs.column("key"))
        assert np.array_equal(embeddings_numpy(ours["text_emb"]), embeddings_numpy(theirs["text_emb"]))
        assert np.allclose(embeddings_numpy(ours["image_emb"]).astype(np.float32),
                           embeddings_numpy(theirs["image_emb"]).astype(np.float32), atol=1e-3)  # fmt: skip
    again = run_cli("score", f"{small_synth}/web/{{00000..00001}}.tar", "-o", str(tmp_path / "scores"),
                    "--model", str(checkpoint))  # fmt: skip
    assert again.returncode == 0 and "2 already scored (skipped)" in again.stdout


def test_command_line_errors_are_one_line(tmp_path, small_synth):
    for args, fragment in [
        (
            ["score", str(tmp_path / "nope"), "-o", str(tmp_path / "s"), "--model", "siglip-tiny"],
            "no such file",
        ),
        (
            ["score", f"{small_synth}/web", "-o", str(tmp_path / "s"), "--model", "siglip-tiny"],
            "has no weights",
        ),
        (
            ["score", f"{small_synth}/web", "-o", str(tmp_path / "s"), "--model", "nope-model"],
            "unknown model",
        ),
        (
            [
                "score",
                f"{small_synth}/web",
                "-o",
                str(tmp_path / "s"),
                "--model",
                "siglip-tiny",
                "--allow-random-init",
                "--device",
                "cuda",
            ],
            "no CUDA GPU",
        ),  # fmt: skip
    ]:
        if "cuda" in args and torch.cuda.is_available():
            continue
        result = run_cli(*args)
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and fragment in result.stderr, result.stderr


def test_random_init_models_are_seeded_so_two_runs_agree(tmp_path, small_synth):
    shard = f"{small_synth}/web/00000.tar"
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        torch.manual_seed(len(name) * 1000 + seed)  # the caller's global RNG must not matter
        score_shards(shard, str(tmp_path / name), ScoreConfig(**{**vars(TINY), "seed": seed}))
    a, b, c = (pq.read_table(tmp_path / name / "00000.parquet") for name in "abc")
    assert a.equals(b)
    assert not np.array_equal(embeddings_numpy(a["image_emb"]), embeddings_numpy(c["image_emb"]))


@pytest.mark.parametrize("url", ["s3://bucket/scores", "memory://scores"])
def test_an_output_url_is_refused_in_one_line_never_written_as_a_local_folder(
    tmp_path, small_synth, url, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CurateError, match="only local paths"):
        score_shards(f"{small_synth}/web/00000.tar", url, TINY)
    assert list(tmp_path.iterdir()) == []


def test_a_file_url_output_is_the_local_folder(tmp_path, small_synth, tiny):
    summary = score_shards(f"{small_synth}/web/00000.tar", f"file://{tmp_path}/scores", TINY, model=tiny)
    assert summary.shards_done == 1
    assert ScoreMetadata.read(tmp_path / "scores" / "00000.parquet").model == "siglip-tiny"


def test_decoding_workers_start_under_the_spawn_method(tmp_path, small_synth):
    # macOS and Python 3.14's Linux default: the DataLoader pickles its collate_fn into each worker, so it
    # must be a module-level function, not a lambda. A fresh interpreter, so the start method is its own.
    script = (
        "import multiprocessing as mp, sys\n"
        "mp.set_start_method('spawn')\n"
        "from curate.score import ScoreConfig, score_shards\n"
        "config = ScoreConfig(model='siglip-tiny', allow_random_init=True, workers=1, batch_size=64)\n"
        "score_shards(sys.argv[1], sys.argv[2], config)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, f"{small_synth}/web/00000.tar", str(tmp_path / "scores")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    # Seeded random weights: the spawned run's file equals one scored here without workers.
    score_shards(f"{small_synth}/web/00000.tar", str(tmp_path / "here"), TINY)
    assert pq.read_table(tmp_path / "scores/00000.parquet").equals(
        pq.read_table(tmp_path / "here/00000.parquet")
    )


# ------------------------------------------------------------------------- low resolution (Flexi-JEST)

LOW = dataclasses.replace(TINY, resolution=16)  # siglip-tiny is 32 px, patch 4: a quarter of the tokens


def test_scoring_at_a_lower_resolution_records_it_and_counts_its_flops(tmp_path, small_synth, tiny):
    shard = f"{small_synth}/web/00000.tar"
    score_shards(shard, str(tmp_path / "full"), TINY, model=tiny)
    summary = score_shards(shard, str(tmp_path / "low"), LOW, model=tiny)
    low, full = pq.read_table(tmp_path / "low/00000.parquet"), pq.read_table(tmp_path / "full/00000.parquet")
    assert ScoreMetadata.read(tmp_path / "low/00000.parquet").resolution == 16
    assert ScoreMetadata.read(tmp_path / "full/00000.parquet").resolution == 32  # always recorded
    assert ScoreMetadata.read(tmp_path / "low/00000.parquet").image_size == 32  # the model's, unchanged
    ok_rows = low.column("status").to_pylist().count(OK)
    assert ok_rows == summary.ok > 0 and 0 < tiny.forward_flops(16) < tiny.forward_flops()
    flops = float(low.schema.metadata[b"curate.flops"])
    assert flops == pytest.approx(ok_rows * tiny.forward_flops(16))

    ok = np.array([s == OK for s in low.column("status").to_pylist()])
    images = embeddings_numpy(low["image_emb"])[ok].astype(np.float32)
    assert np.allclose(np.linalg.norm(images, axis=1), 1.0, atol=2e-3)
    assert np.abs(images - embeddings_numpy(full["image_emb"])[ok].astype(np.float32)).max() > 0.05
    # Only the image tower sees the resolution: the text embeddings are the full run's, bit for bit.
    assert np.array_equal(embeddings_numpy(low["text_emb"]), embeddings_numpy(full["text_emb"]))
    # The slow twin: one sample decoded at 16 px by the model's own transform, encoded alone.
    sample = next(iter_samples(shard, ReadStats()))
    pixels = tiny.preprocess_at(16)(Image.open(io.BytesIO(sample.image)).convert("RGB"))
    assert pixels.shape == (3, 16, 16)
    with torch.no_grad():
        alone = tiny.encode_images(pixels[None], 16)[0].numpy()
    row = low.column("key").to_pylist().index(sample.key)
    assert np.allclose(embeddings_numpy(low["image_emb"])[row].astype(np.float32), alone, atol=2e-3)

    # --resolution at the model's own size is the full-resolution run, metadata and all.
    score_shards(shard, str(tmp_path / "own"), dataclasses.replace(TINY, resolution=32), model=tiny)
    own, baseline = comparable(tmp_path / "own/00000.parquet"), comparable(tmp_path / "full/00000.parquet")
    assert own.equals(baseline, check_metadata=True)


def test_low_resolution_from_the_command_line_and_bad_resolutions_in_one_line(tmp_path, small_synth, tiny):
    shard = f"{small_synth}/web/00000.tar"
    args = ["score", shard, "--model", "siglip-tiny", "--allow-random-init"]
    # Decoded in a worker process at 16 px: the same file as the in-process run of the library.
    result = run_cli(*args, "-o", str(tmp_path / "cli"), "--workers", "1", "--batch-size", "64",
                     "--resolution", "16")  # fmt: skip
    assert result.returncode == 0, result.stderr
    score_shards(shard, str(tmp_path / "library"), LOW, model=tiny)
    assert comparable(tmp_path / "cli/00000.parquet").equals(
        comparable(tmp_path / "library/00000.parquet"), check_metadata=True
    )
    for model, resolution, fragment in [
        ("siglip-tiny", "18", "--resolution 18: siglip-tiny needs a multiple of its patch size 4 between 4"),
        ("siglip-tiny", "64", "between 4 and its image size 32"),  # no upsampling past the model's size
        ("siglip-tiny", "0", "--resolution must be a positive number of pixels, got 0"),
        ("RN50", "112", "RN50: its image tower is not an open_clip ViT"),  # ~3 s to build, random weights
    ]:
        bad = ["score", shard, "-o", str(tmp_path / "bad"), "--model", model, "--allow-random-init"]
        result = run_cli(*bad, "--workers", "0", "--resolution", resolution)
        assert result.returncode == 1, result.stderr
        assert result.stderr.count("\n") == 1 and fragment in result.stderr, result.stderr
        assert not (tmp_path / "bad").exists()  # refused before anything was written


def test_a_folder_holds_one_resolution_on_resume_and_for_select(tmp_path, small_synth, tiny):
    web, low = f"{small_synth}/web", tmp_path / "low"
    score_shards(f"{web}/00000.tar", str(low), LOW, model=tiny)
    # Resume at another resolution (the model's own, here) is refused, before the model is even loaded.
    with pytest.raises(CurateError, match="holds scores encoded at 16 px, this run encodes at 32 px"):
        score_shards(web, str(low), TINY)
    with pytest.raises(CurateError, match="encoded at 16 px, this run encodes at 8 px"):
        score_shards(web, str(low), dataclasses.replace(TINY, resolution=8), model=tiny)
    assert sorted(p.name for p in low.iterdir()) == ["00000.parquet"]  # nothing mixed in
    summary = score_shards(f"{web}/{{00000..00001}}.tar", str(low), LOW, model=tiny)  # same: resumes
    assert (summary.shards_skipped, summary.shards_done) == (1, 1)
    assert open_score_folder(low).metadata.resolution == 16

    # A full-resolution file copied in: every reader refuses the folder, select included, in one line.
    score_shards(f"{web}/00002.tar", str(tmp_path / "full"), TINY, model=tiny)
    shutil.copy(tmp_path / "full/00002.parquet", low)
    with pytest.raises(CurateError, match=r"00002.parquet was scored at 32 px but .*00000.parquet at 16 px"):
        open_score_folder(low)
    result = run_cli("select", str(low), "-o", str(tmp_path / "manifest"), "--ratio", "0.5")
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "keep one resolution per folder" in result.stderr and not (tmp_path / "manifest").exists()

    # A file from before curate recorded the resolution was scored at the model's own size.
    table = pq.read_table(tmp_path / "full/00002.parquet")
    old = {k: v for k, v in table.schema.metadata.items() if k != b"curate.resolution"}
    pq.write_table(table.replace_schema_metadata(old), tmp_path / "full/00003.parquet")
    assert ScoreMetadata.read(tmp_path / "full/00003.parquet").resolution == 0
    assert open_score_folder(tmp_path / "full").metadata.encoded_at == 32  # it joins the 32 px file
    resumed = score_shards(f"{web}/00002.tar", str(tmp_path / "full"), TINY, model=tiny)  # at full size
    assert resumed.shards_skipped == 1
    with pytest.raises(CurateError, match="encoded at 32 px, this run encodes at 16 px"):
        score_shards(web, str(tmp_path / "full"), LOW, model=tiny)


def test_eligible_rows_and_eligible_sql_are_one_rule():
    """select's DuckDB pass and the Arrow readers (dedup, the trainer's reference) admit the same rows: status
    ok and a finite similarity; a null is never eligible."""
    nan, inf = float("nan"), float("inf")
    cases = [
        (OK, 0.5, True),
        (OK, -0.25, True),
        (OK, nan, False),  # an embedding was NaN: its cosine is too
        (OK, inf, False),
        (OK, -inf, False),
        (OK, None, False),
        ("undecodable_image", None, False),
        ("undecodable_image", 0.5, False),
        ("nonfinite_embedding", nan, False),
        (None, 0.5, False),
    ]
    rows = pa.table(
        {
            "status": pa.array([c[0] for c in cases], pa.string()),
            "similarity": pa.array([c[1] for c in cases], pa.float32()),
        }
    )
    expected = [c[2] for c in cases]
    assert eligible_rows(rows).tolist() == expected
    with duckdb.connect() as con:
        con.register("rows", rows)
        assert [r[0] for r in con.sql(f"SELECT {ELIGIBLE_SQL} FROM rows").fetchall()] == expected


def test_a_score_folder_finds_a_shards_file_and_reads_eligible_rows_in_file_order(tmp_path):
    rng = np.random.default_rng(0)
    image, text = unit(rng.normal(size=(6, 8))), unit(rng.normal(size=(6, 8)))
    image[1] = np.nan  # scored before curate refused NaN: ok, with a NaN similarity
    status = [OK, OK, "undecodable_image", OK, OK, OK]
    write_scores(tmp_path / "s", "00001.tar", list("abc"), image[:3], text[:3], status=status[:3])
    write_scores(tmp_path / "s", "00000.tar", list("def"), image[3:], text[3:], status=status[3:])
    folder = open_score_folder(tmp_path / "s")
    assert folder.file_of("00001.tar") == folder.file_of("s3://bucket/web/00001.tar") == 1
    assert folder.file_of("/shards/00000.tar") == 0 and folder.file_of("00002.tar") is None
    assert folder.read_file(1, ["key"])["key"].to_pylist() == list("abc")
    assert folder.read_columns(["key"], eligible_only=True)["key"].to_pylist() == list("defa")
    assert folder.read_columns(["key", "status"]).num_rows == 6

    # A file with the metadata but not the columns: one line, naming it, from every read.
    table = pq.read_table(folder.files[0]).drop_columns(["similarity"])
    pq.write_table(table, folder.files[0])
    for read in (
        lambda: folder.read_file(0, ["key", "similarity"]),
        lambda: folder.read_columns(["key"], True),
    ):
        with pytest.raises(CurateError, match="cannot read score file .*00000.parquet") as error:
            read()
        assert "\n" not in str(error.value)
