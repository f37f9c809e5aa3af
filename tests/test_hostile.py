"""A hostile but fair user: outputs at URLs, deleted upstream runs, killed runs, two runs into one folder.

Each case asserts the exit code, the one line on stderr, and that nothing already written changed.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from builders import unit, write_scores
from conftest import run_cli

from curate import fileio
from curate.errors import CurateError
from curate.fileio import output_path
from curate.score.schema import cost_metadata
from curate.select import SelectConfig, select
from curate.train import DataConfig, TrainConfig
from curate.train.run import MetricsWriter, write_config

TINY_MODEL = ["--model", "siglip-tiny", "--allow-random-init"]
TINY_TRAIN = ["--steps", "2", "--batch-size", "8", "--cache", "memory", "--device", "cpu", "--workers", "0"]


def assert_one_line_error(result, *fragments: str, code: int = 1) -> str:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def manifest(scores, tmp_path_factory) -> str:
    """A selection of `scores`: enough for export to reach its output."""
    out = str(tmp_path_factory.mktemp("selected") / "manifest")
    select(scores, out, SelectConfig(ratio=0.5, super_batch=20, chunks=2, device="cpu"))
    return out


@pytest.fixture
def url_table(tmp_path) -> Path:
    path = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": ["http://127.0.0.1:1/a.jpg"], "caption": ["a red circle"]}), path)
    return path


def writing_commands(small_synth: str, scores: str, url_table: Path) -> dict[str, list[str]]:
    """Each command that writes a local output folder, up to that folder (which comes last)."""
    return {
        "synth": ["synth", "--n", "20", "--eval-per-class", "1"],
        "download": ["download", str(url_table)],
        "score": ["score", f"{small_synth}/web/00000.tar", *TINY_MODEL, "-o"],
        "dedup": ["dedup", scores, "--threshold", "0.9", "-o"],
        "select": ["select", scores, "--ratio", "0.5", "-o"],
        "train": ["train", f"{small_synth}/web", "--model", "siglip-tiny", *TINY_TRAIN, "-o"],
        "report": ["report", "--scores", scores, "-o"],
    }


WRITING = ["synth", "download", "score", "dedup", "select", "train", "report"]


# ------------------------------------------------------------------------------ one rule for outputs


@pytest.mark.parametrize("url", ["memory://x", "s3://bucket/x", "gs://bucket/x", "http://host/x"])
@pytest.mark.parametrize("command", WRITING)
def test_an_output_url_is_refused_in_one_line_before_any_work(
    command, url, tmp_path, small_synth, scores, url_table, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_cli(*writing_commands(small_synth, scores, url_table)[command], url)
    line = assert_one_line_error(result, url, "only local paths (or file:// URLs)")
    assert line.split()[1] in ("--output", "OUT")
    # Nothing written: no local folder named `memory:` or `s3:`, nothing else either.
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("command", ["synth", "score", "dedup", "select", "report"])
def test_a_file_url_output_writes_the_local_path(
    command, tmp_path, small_synth, scores, url_table, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    result = run_cli(*writing_commands(small_synth, scores, url_table)[command], f"file://{tmp_path}/out")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out").is_dir() and any((tmp_path / "out").iterdir())
    assert not (tmp_path / "file:").exists()


def test_a_file_url_is_the_same_local_path_and_any_other_url_is_refused():
    """The rule itself. train and download take their output through it (their refusals above show it); a
    file:// output of theirs is not run here, for time (download's is in test_download)."""
    assert output_path("file:///abs/m") == Path("/abs/m")
    assert output_path("runs/x") == Path("runs/x")
    with pytest.raises(CurateError, match=r"^-o s3://b/x: only local paths \(or file:// URLs\)"):
        output_path("s3://b/x", "-o")


# --------------------------------------------------------------------- cost lineage says it is incomplete


def _costed_run(folder: Path, manifest: str | None = None) -> Path:
    """A 40-step run as `curate train` writes it, costing 1e9 FLOPs and a second a step."""
    folder.mkdir(parents=True)
    write_config(folder, TrainConfig(DataConfig(("shards/",), manifest), str(folder), steps=40), {})
    with MetricsWriter(folder) as metrics:
        metrics.write({"step": 40, "loss": 1.0, "flops": 40e9, "seconds": 40.0})
    return folder


@pytest.fixture
def learner_of_a_reference(tmp_path) -> dict[str, Path]:
    """runs/reference → its step-40 checkpoint scored the crawl (score files with costs) → a manifest →
    runs/learner trained on it."""
    reference = _costed_run(tmp_path / "runs/reference")
    scores = tmp_path / "scores"
    rng = np.random.default_rng(0)
    extra = cost_metadata(5e9, 3.0) | {
        "curate.checkpoint": str(reference / "checkpoints/step_40.pt"),
        "curate.checkpoint_step": "40",
    }
    keys = [f"{i:05d}" for i in range(100)]
    write_scores(
        scores,
        "00000.tar",
        keys,
        unit(rng.standard_normal((100, 8))),
        unit(rng.standard_normal((100, 8))),
        extra=extra,
    )
    config = SelectConfig(ratio=0.5, super_batch=20, chunks=2, device="cpu")
    select(str(scores), str(tmp_path / "manifest"), config)
    learner = _costed_run(tmp_path / "runs/learner", manifest=str(tmp_path / "manifest"))
    return {"reference": reference, "learner": learner, "scores": scores}


def test_a_deleted_reference_run_makes_the_total_a_named_lower_bound(learner_of_a_reference, tmp_path):
    learner = learner_of_a_reference["learner"]
    complete = run_cli("report", str(learner), "-o", str(tmp_path / "complete"))
    assert complete.returncode == 0, complete.stderr
    assert "lower bound" not in complete.stdout and "≥" not in complete.stdout

    shutil.rmtree(learner_of_a_reference["reference"])
    result = run_cli("report", str(learner), "-o", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr
    gap = f"{learner_of_a_reference['reference']} is missing"
    (headline,) = [line for line in result.stdout.splitlines() if line.startswith("learner")]
    assert "(≥ 4.50e+10)" in headline and f"(a lower bound: {gap}" in headline  # 40e9 own + 5e9 scoring
    assert f"note: learner: cost not complete (a lower bound): {gap}" in result.stderr
    page = (tmp_path / "report" / "index.html").read_text()
    assert "<td>≥ 4.500e+10</td>" in page and gap in page


def test_a_deleted_score_folder_upstream_is_a_named_gap(learner_of_a_reference, tmp_path):
    shutil.rmtree(learner_of_a_reference["scores"])
    result = run_cli("report", str(learner_of_a_reference["learner"]), "-o", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr
    (headline,) = [line for line in result.stdout.splitlines() if line.startswith("learner")]
    assert "(≥ 4.00e+10)" in headline and "(a lower bound: " in headline
    assert str(learner_of_a_reference["scores"]) in headline


# ----------------------------------------------------------------------------- leftovers and concurrency


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=60)
    return child.pid


@pytest.mark.parametrize("stage", ["dedup", "export"])
def test_spill_folders_of_killed_runs_are_removed_by_the_next_run(stage, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # $TMPDIR for this test alone
    host = fileio._host()
    dead = tmp_path / f"curate-spill-{stage}-{host}-{_dead_pid()}-abc123"
    live = tmp_path / f"curate-spill-dedup-{host}-{os.getpid()}-def456"  # a run going on beside this one
    elsewhere = tmp_path / f"curate-spill-dedup-{'0' * 6 if host != '0' * 6 else '1' * 6}-{_dead_pid()}-x"
    for folder in (dead, live, elsewhere):
        folder.mkdir()
        (folder / "bucket-00000.arrow").write_bytes(b"spilled")
    with fileio.spill_folder(stage) as spill:
        assert Path(spill).parent == tmp_path and Path(spill).name.startswith(f"curate-spill-{stage}-{host}-")
        assert not dead.exists() and live.is_dir() and elsewhere.is_dir()
    assert not Path(spill).exists()


def test_a_killed_dedup_leaves_a_spill_that_the_next_dedup_removes(scores, tmp_path, monkeypatch):
    """A real kill -9 mid-run: the spill is left in $TMPDIR; the next run removes it, and its keep file is
    complete."""
    env = os.environ | {"TMPDIR": str(tmp_path)}
    code = (
        "import os, signal, curate.dedup.run as run\n"
        "def die(*args, **kwargs): os.kill(os.getpid(), signal.SIGKILL)\n"
        "run.assign_file = die\n"  # killed while spilling, after the spill folder was made
        "from curate.dedup import DedupConfig, dedup\n"
        f"dedup({scores!r}, {str(tmp_path / 'keep')!r}, DedupConfig(0.9, device='cpu', command=''))\n"
    )
    killed = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (left,) = [p for p in tmp_path.iterdir() if p.name.startswith("curate-spill-dedup-")]
    assert not (tmp_path / "keep" / "keep.parquet").exists()

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the same $TMPDIR, in this process
    again = run_cli("dedup", scores, "--threshold", "0.9", "-o", str(tmp_path / "keep"))
    assert again.returncode == 0, again.stderr
    assert not left.exists() and (tmp_path / "keep" / "keep.parquet").is_file()
    assert not (tmp_path / "keep" / fileio.LOCK_FILE).exists()


@pytest.mark.parametrize(
    "command", ["synth", "download", "score", "dedup", "select", "export", "train", "report"]
)
def test_a_second_command_writing_a_held_folder_is_refused_and_changes_nothing(
    command, tmp_path, small_synth, scores, manifest, url_table, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("written before\n")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        commands = writing_commands(small_synth, scores, url_table)
        commands["export"] = ["export", manifest, "--shards", f"{small_synth}/web", "-o"]
        result = run_cli(*commands[command], str(out))
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert_one_line_error(
        result, str(out), "another curate command is writing this folder", f"pid {holder.pid}"
    )
    assert sorted(p.name for p in out.iterdir()) == [fileio.LOCK_FILE, "mine.txt"]
    assert (out / "mine.txt").read_text() == "written before\n"


HOLD_LOCK = """
import sys, time
from curate.fileio import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()  # kill -9: its lock file stays, naming a dead pid
    holder.wait(timeout=60)
    assert f"pid {holder.pid}" in (out / fileio.LOCK_FILE).read_text()
    with fileio.output_lock(out):
        assert f"pid {os.getpid()}" in (out / fileio.LOCK_FILE).read_text()
    assert not (out / fileio.LOCK_FILE).exists()


def _file_size_limit() -> None:
    """A full disk, made real by a file size limit (writes past 16 KB fail with EFBIG, as with ENOSPC)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, do not kill the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 14, 1 << 14))


# dedup's first big write is a spill bucket (outside `atomic_open`: it used to be a bare "File too large"),
# export's an output shard
@pytest.mark.parametrize("command, full", [("dedup", "bucket-00000.arrow"), ("export", "out/00000.tar")])
def test_a_full_disk_names_the_file(command, full, tmp_path, small_synth, scores, manifest):
    args = {
        "dedup": ["dedup", scores, "--threshold", "0.9"],
        "export": ["export", manifest, "--shards", f"{small_synth}/web"],
    }[command]
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "curate_cli", *args, "-o", str(tmp_path / "out")],
        capture_output=True, text=True, preexec_fn=_file_size_limit, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    assert error.endswith(f"{full}: File too large (is the disk full?)"), error
    assert str(tmp_path) in error
    assert not any(p.name.startswith("curate-spill-") for p in tmp_path.iterdir())  # removed on the way out
