"""Nothing lost silently (issue 17): a diverged run, a manifest mostly absent from the data, the hidden
temporaries of killed writers."""

import resource
import shutil
import signal
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from builders import write_manifest_rows
from conftest import run_cli

from curate.errors import CurateError
from curate.fileio import atomic_open, remove_stale_temporaries
from curate.train import DataConfig, TrainConfig, train
from curate.train.data import keys_in_shards


def tiny(data: str, out: Path, **settings) -> TrainConfig:
    settings = {"model": "siglip-tiny", "batch_size": 16, "log_every": 1, "steps": 2, **settings}
    return TrainConfig(DataConfig((data,), cache="memory", workers=0), str(out), **settings)


def one_line_error(stderr: str) -> str:
    """The error line of a failed command (after the progress bar's last frame), checked to be its last."""
    lines = stderr.splitlines()
    assert "Traceback" not in stderr and lines[-1].startswith("error: "), stderr
    return lines[-1]


def assert_checkpoints_finite(run: Path) -> list[str]:
    """Every checkpoint of the run holds finite weights; their names."""
    paths = sorted(run.glob("checkpoints/*.pt")) + [p for p in [run / "latest.pt"] if p.exists()]
    for path in paths:
        state = torch.load(path, weights_only=True)["state_dict"]
        for name, tensor in state.items():
            assert torch.isfinite(tensor).all(), f"{path.name}: {name}"
    return [p.name for p in paths]


# ---------------------------------------------------------------------------------------------- divergence


def test_a_diverging_run_stops_in_one_line_and_saves_no_nan(tmp_path, small_synth):
    """An absurd learning rate: AdamW moves every weight by ~lr in step 1, so exp(logit_scale) overflows
    and the loss of step 2 is NaN. It used to run on, save NaN checkpoints and report `final loss nan`."""
    run = tmp_path / "run"
    args = ["train", f"{small_synth}/web", "-o", str(run), "--steps", "4", "--batch-size", "16"]
    args += ["--workers", "0", "--cache", "memory", "--lr", "1e10", "--warmup", "1", "--save-every", "1"]
    result = run_cli(*args)
    assert result.returncode == 1, result.stdout + result.stderr
    error = one_line_error(result.stderr)
    assert error.startswith("error: training diverged: the loss is not finite at step 2;")
    assert "latest.pt holds the last good checkpoint, step 1" in error and "--lr" in error
    assert assert_checkpoints_finite(run) == ["step_1.pt", "latest.pt"]


def test_resuming_a_finished_run_says_so_instead_of_a_nan_loss(tmp_path, small_synth):
    """It printed `trained steps 2→2 …: final loss nan, 0 samples/s`, as a pipeline re-run shows it."""
    run = tmp_path / "run"
    args = ["train", f"{small_synth}/web", "-o", str(run), "--steps", "2", "--batch-size", "16"]
    args += ["--workers", "0", "--cache", "memory"]
    assert run_cli(*args).returncode == 0
    again = run_cli(*args, "--resume")
    assert again.returncode == 0, again.stderr
    assert f"already trained to step 2: nothing left to train → {run}/latest.pt" in again.stdout
    assert "nan" not in again.stdout
    assert torch.load(run / "latest.pt", weights_only=True)["step"] == 2


def test_no_checkpoint_is_written_when_the_weights_turned_nan_under_a_finite_loss(tmp_path, small_synth):
    """The loss of a step comes before its update: a non-finite update (here from AdamW moments made NaN in
    the checkpoint it resumes from) shows in the weights at the save, not yet in any loss."""
    config = tiny(f"{small_synth}/web", tmp_path / "run", save_every=1)

    def kill_at_2(done, total, status):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, progress=kill_at_2)
    latest = tmp_path / "run" / "latest.pt"
    payload = torch.load(latest, weights_only=True)
    moments = next(iter(payload["optimizer"]["state"].values()))
    moments["exp_avg"].fill_(float("nan"))
    torch.save(payload, latest)
    with pytest.raises(CurateError, match="the weights are not finite after step 2") as error:
        train(replace(config, resume=True))
    assert "\n" not in str(error.value) and "last good checkpoint, step 1" in str(error.value)
    assert assert_checkpoints_finite(tmp_path / "run") == ["step_1.pt", "latest.pt"]


# ---------------------------------------------------------------------------------------------- manifest


def mostly_absent_manifest(small_synth: str, folder: Path) -> Path:
    """10 batches of 10 keys of 00000.tar: one real key in each, nine the shard does not hold (as a
    manifest selected from another crawl whose shards have the same names)."""
    real = sorted(keys_in_shards([f"{small_synth}/web/00000.tar"]))[:10]
    rows = [key for i, key in enumerate(real) for key in [key, *(f"9{i}{j:07d}" for j in range(9))]]
    return write_manifest_rows(folder, rows, "00000.tar", [b for b in range(10) for _ in range(10)])


@pytest.mark.parametrize("cache", ["memory", "stream"])
def test_a_manifest_mostly_absent_from_the_data_is_refused_unless_allowed(tmp_path, small_synth, cache):
    """It trained on 18 of 594 manifest keys without a word (exit 0)."""
    manifest = mostly_absent_manifest(small_synth, tmp_path / "manifest")
    base = ["train", f"{small_synth}/web", "--manifest", str(manifest), "--steps", "2", "--workers", "0"]
    base += ["--cache", cache]
    for order in ["batches", "shuffle"]:
        extra = ["--order", order] + (["--batch-size", "8"] if order == "shuffle" else [])
        refused = run_cli(*base, *extra, "-o", str(tmp_path / f"refused-{order}"))
        assert refused.returncode == 1, refused.stdout + refused.stderr
        error = one_line_error(refused.stderr)
        assert "train --manifest: " in error and "--allow-missing" in error  # select/manifest.py's words
        assert "of the manifest's 100 keys" in error
        assert not (tmp_path / f"refused-{order}" / "latest.pt").exists()

    allowed = run_cli(*base, "--allow-missing", "-o", str(tmp_path / "allowed"))
    assert allowed.returncode == 0, allowed.stderr
    assert "(10 of the manifest's 100 keys found)" in allowed.stdout
    assert "manifest samples were not in the data" in allowed.stderr  # the rows trained without, as before


def test_a_stream_counts_a_manifest_in_bare_tars_too(tmp_path, small_synth):
    """Streaming counts the keys up front from each shard's parquet; tars without one are listed."""
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(f"{small_synth}/web/00000.tar", bare)
    assert keys_in_shards([str(bare / "00000.tar")]) == keys_in_shards([f"{small_synth}/web/00000.tar"])
    manifest = mostly_absent_manifest(small_synth, tmp_path / "manifest")
    data = DataConfig((str(bare),), str(manifest), cache="stream", workers=0)
    config = replace(tiny(str(bare), tmp_path / "run"), data=data, batch_size=None)
    with pytest.raises(CurateError, match="of the manifest's 100 keys"):
        train(config)


# ---------------------------------------------------------------------------------------------- temporaries


def killed_writer(path: Path) -> None:
    """A process that dies mid-`atomic_open`, leaving its temporary, as a killed run does."""
    code = "import os, sys\nfrom curate.fileio import atomic_open\n"
    code += "with atomic_open(sys.argv[1], 'wb') as handle:\n    handle.write(b'half')\n    os._exit(9)\n"
    assert subprocess.run([sys.executable, "-c", code, str(path)]).returncode == 9


def hidden(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")}


def test_stale_temporaries_of_killed_runs_are_removed_and_live_ones_kept(tmp_path, small_synth):
    run = tmp_path / "run"
    args = [
        "train",
        f"{small_synth}/web",
        "-o",
        str(run),
        "--steps",
        "1",
        "--batch-size",
        "8",
        "--workers",
        "0",
    ]
    assert run_cli(*args).returncode == 0
    killed_writer(run / "latest.pt")
    killed_writer(run / "checkpoints" / "step_2.pt")
    (run / ".batches.parquet.1a2b3c4d.tmp").write_bytes(b"an older version's")  # `.{name}.{random}.tmp`
    (run / ".notes.tmp").write_text("not ours")
    assert len(hidden(run)) == 3 and len(hidden(run / "checkpoints")) == 1
    with atomic_open(str(run / "metrics.jsonl"), "a") as live:  # this process: alive, so kept
        live.write("being written")
        result = run_cli(*args, "--resume")
        assert result.returncode == 0, result.stderr  # a finished run resumes to its end at once
        assert hidden(run) == {".notes.tmp", Path(live.name).name}
        assert hidden(run / "checkpoints") == set()

    scores = tmp_path / "scores"
    score = ["score", f"{small_synth}/web/00000.tar", "-o", str(scores), "--model", "siglip-tiny"]
    score += ["--allow-random-init", "--workers", "0"]
    assert run_cli(*score).returncode == 0
    killed_writer(scores / "00001.parquet")
    (scores / ".00002.parquet.deadbeef.tmp").write_bytes(b"")
    assert len(hidden(scores)) == 2
    rerun = run_cli(*score)  # every shard done: only the cleaning happens
    assert rerun.returncode == 0, rerun.stderr
    assert hidden(scores) == set()
    assert remove_stale_temporaries(tmp_path / "no-such-folder", "s3://bucket/scores") == 0


# ---------------------------------------------------------------------------------------------- damage


def test_training_counts_a_shard_cut_inside_a_header(tmp_path, small_synth):
    """The probe's cut: 100 bytes into a member's header, where tarfile stops as if the archive ended. Train
    used to decode the 10 samples before it and say nothing; the other 90 are now counted and the shard
    named."""
    web = tmp_path / "web"
    shutil.copytree(f"{small_synth}/web", web)
    with tarfile.open(web / "00001.tar") as whole:
        offset = whole.getmembers()[30].offset
    (web / "00001.tar").write_bytes((web / "00001.tar").read_bytes()[: offset + 100])
    summary = train(tiny(str(web), tmp_path / "run"))
    assert summary.damaged == {"00001.tar": "no end-of-archive marker (truncated)"}
    assert summary.skipped["truncated_tar"] == 91  # the half-read sample and the 90 never reached
    args = ["train", str(web), "-o", str(tmp_path / "cli"), "--steps", "1", "--batch-size", "16"]
    result = run_cli(*args, "--workers", "0", "--cache", "memory")
    assert result.returncode == 0, result.stderr
    assert "warning: 00001.tar is damaged (no end-of-archive marker (truncated))" in result.stderr
    assert "skipped (" in result.stdout and "truncated_tar 91" in result.stdout


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_leaves_no_file(tmp_path, small_synth):
    """A full disk, made real by a file size limit on the training process (writes past 1 MB fail with
    EFBIG, as they would with ENOSPC): torch reported it as a RuntimeError, printed as a traceback."""

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, do not kill the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    run = tmp_path / "run"
    args = ["train", f"{small_synth}/web", "-o", str(run), "--steps", "1", "--batch-size", "16"]
    args += ["--workers", "0", "--cache", "memory"]
    result = subprocess.run(
        [sys.executable, "-m", "curate_cli", *args], capture_output=True, text=True, preexec_fn=limited
    )
    assert result.returncode == 1
    error = one_line_error(result.stderr)
    assert error.endswith("checkpoints/step_1.pt: File too large (is the disk full?)")
    assert not list(run.glob("**/*.pt")) and not list(run.glob("**/.*.tmp"))  # nothing half-written
