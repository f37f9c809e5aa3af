"""Nothing lost silently (issue 17): numeric options out of range, Ctrl-C, url schemes, --where's reach."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from builders import unit, write_scores
from conftest import http_server, run_cli
from PIL import Image

from curate.download import DownloadConfig
from curate.download.urls import UNSUPPORTED_SCHEME, fetchable_rows
from curate.select.manifest import read_manifest
from curate.shards import iter_samples


def assert_one_line_error(result, option: str) -> None:
    assert result.returncode in (1, 2), (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert option in lines[0], lines[0]


# --------------------------------------------------------------------------- numeric options, every command

SELECT = ("select", "scores", "-o", "manifest", "--ratio", "0.5")
TRAIN = ("train", "shards", "-o", "run")
SCORE = ("score", "shards", "-o", "scores", "--model", "siglip-tiny")
DOWNLOAD = ("download", "urls.csv", "out")
ONLINE = (*TRAIN, "--online-jest", "--ref", "scores")

# (command line after `curate`, the option its one-line error must name). The inputs need not exist: every
# command builds (and so validates) its config before it reads anything.
BAD_NUMBERS = [
    (("synth", "out", "--seed", "-1"), "--seed"),
    (("synth", "out", "--zipf", "nan"), "--zipf"),
    (("synth", "out", "--zipf", "inf"), "--zipf"),
    (("synth", "out", "--zipf", "-1"), "--zipf"),
    (("synth", "out", "--curated-fraction", "5"), "--curated-fraction"),
    (("synth", "out", "--curated-fraction", "nan"), "--curated-fraction"),
    (("synth", "out", "--eval-per-class", "0"), "--eval-per-class"),
    (("synth", "out", "--workers", "-1"), "--workers"),
    (("synth", "out", "--misaligned", "nan"), "--misaligned"),
    (("synth", "out", "--corrupt", "-0.1"), "--corrupt"),
    (("synth", "out", "--n", "0"), "--n"),
    (("synth", "out", "--samples-per-shard", "0"), "--samples-per-shard"),
    ((*SELECT, "--super-batch", "0"), "--super-batch"),
    ((*SELECT, "--super-batch", "-4"), "--super-batch"),
    ((*SELECT, "--batch-size", "0"), "--batch-size"),
    ((*SELECT, "--chunks", "0"), "--chunks"),
    ((*SELECT, "--temperature", "nan"), "--temperature"),
    ((*SELECT, "--temperature", "inf"), "--temperature"),
    ((*SELECT, "--seed", "-1"), "--seed"),
    ((*SELECT, "--steps", "0"), "--steps"),
    ((*SELECT, "--passes", "0"), "--passes"),
    (("select", "scores", "-o", "manifest", "--ratio", "nan"), "--ratio"),
    (("select", "scores", "-o", "manifest", "--ratio", "1"), "--ratio"),
    ((*TRAIN, "--lr", "nan"), "--lr"),
    ((*TRAIN, "--lr", "inf"), "--lr"),
    ((*TRAIN, "--warmup", "-1"), "--warmup"),
    ((*TRAIN, "--wd", "nan"), "--wd"),
    ((*TRAIN, "--beta2", "1"), "--beta2"),
    ((*TRAIN, "--grad-clip", "0"), "--grad-clip"),
    ((*TRAIN, "--steps", "0"), "--steps"),
    ((*TRAIN, "--batch-size", "0"), "--batch-size"),
    ((*TRAIN, "--workers", "-1"), "--workers"),
    ((*TRAIN, "--seed", "-1"), "--seed"),
    ((*TRAIN, "--shuffle-buffer", "0"), "--shuffle-buffer"),
    ((*TRAIN, "--log-every", "0"), "--log-every"),
    ((*TRAIN, "--eval-every", "-1"), "--eval-every"),
    ((*TRAIN, "--save-every", "-1"), "--save-every"),
    ((*ONLINE, "--ratio", "nan"), "--ratio"),
    ((*ONLINE, "--chunks", "0"), "--chunks"),
    ((*ONLINE, "--temperature", "0"), "--temperature"),
    ((*SCORE, "--batch-size", "0"), "--batch-size"),
    ((*SCORE, "--workers", "-1"), "--workers"),
    ((*SCORE, "--seed", "-1"), "--seed"),
    ((*SCORE, "--backend", "ray", "--gpus-per-worker", "nan"), "--gpus-per-worker"),
    ((*DOWNLOAD, "--retries", "-1"), "--retries"),
    ((*DOWNLOAD, "--timeout", "0"), "--timeout"),
    ((*DOWNLOAD, "--threads", "0"), "--threads"),
    ((*DOWNLOAD, "--processes", "0"), "--processes"),
    ((*DOWNLOAD, "--image-size", "-1"), "--image-size"),
    ((*DOWNLOAD, "--samples-per-shard", "0"), "--samples-per-shard"),
    (("export", "manifest", "-o", "out", "--samples-per-shard", "0"), "--samples-per-shard"),
    (("eval", "ckpt", "evalset", "--batch-size", "0"), "--batch-size"),
    (("report", "-o", "out", "--manifest", "manifest", "--top", "-1"), "--top"),
]


@pytest.mark.parametrize(("args", "option"), BAD_NUMBERS, ids=[" ".join(a) for a, _ in BAD_NUMBERS])
def test_a_meaningless_number_stops_in_one_line_naming_its_option(tmp_path, args, option):
    result = run_cli(*args, cwd=str(tmp_path))
    assert_one_line_error(result, option)
    assert not any(tmp_path.iterdir()), "refused before writing anything"


# ------------------------------------------------------------------------------------------------- Ctrl-C


def ctrl_c_restored() -> None:
    """`preexec_fn` for a process a test presses Ctrl-C in: SIGINT back to its default disposition there.

    A shell runs a background job (`make test &`) with SIGINT ignored, its children inherit that, and Python
    installs its KeyboardInterrupt handler at startup only where SIGINT is not ignored: the test's Ctrl-C
    would do nothing. Reset to SIG_DFL before exec, the child's Python installs that handler itself."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt(args: list[str], started: Callable[[], bool], cwd: Path) -> subprocess.CompletedProcess:
    """Run `curate ARGS` in a process group of its own and, once `started()`, press Ctrl-C: SIGINT to the
    whole group, as a terminal sends it (so worker processes get it too)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "curate_cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=ctrl_c_restored,
    )
    try:
        deadline = time.monotonic() + 180
        while not started():
            assert process.poll() is None, f"ended before it was interrupted: {process.communicate()}"
            assert time.monotonic() < deadline, "never started"
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


def assert_interrupted(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 130, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: interrupted", result.stderr


def test_ctrl_c_while_the_cli_imports_gives_the_one_line(tmp_path):
    """A Ctrl-C in the first second or two lands in `import torch` (cli/main.py's imports), before main()
    runs; here it is sent by the process to itself exactly then, so the test does not race the imports."""
    code = textwrap.dedent(
        """
        import os, runpy, signal, sys

        class CtrlCAtTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch":
                    os.kill(os.getpid(), signal.SIGINT)
                return None

        sys.meta_path.insert(0, CtrlCAtTorch())
        sys.argv = ["curate", "synth", "out", "--n", "10"]
        runpy.run_module("curate_cli", run_name="__main__")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=ctrl_c_restored,
    )
    assert_interrupted(result)
    assert not (tmp_path / "out").exists()


def test_ctrl_c_during_synth_with_worker_processes(tmp_path):
    out = tmp_path / "data"
    args = ["synth", str(out), "--n", "100000", "--workers", "2", "--samples-per-shard", "500"]
    result = interrupt(args, lambda: any((out / "web").glob("*.tar")), tmp_path)
    assert_interrupted(result)


def test_ctrl_c_during_train_with_dataloader_workers(tmp_path, small_synth):
    run = tmp_path / "run"
    args = [
        "train", f"{small_synth}/web", "-o", str(run), "--steps", "100000", "--batch-size", "16",
        "--workers", "2", "--cache", "stream", "--device", "cpu", "--log-every", "1", "--warmup", "1",
    ]  # fmt: skip
    result = interrupt(args, (run / "metrics.jsonl").exists, tmp_path)
    assert_interrupted(result)


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/www on 127.0.0.1, slowly: a download of a few thousand rows is still running when
    Ctrl-C comes."""
    root = tmp_path / "www"
    root.mkdir()
    with http_server(root, delay=0.05) as base:
        yield root, base


def put_png(path: Path, colour) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())


def test_ctrl_c_during_download_leaves_img2dataset_noise_in_its_log(tmp_path, server):
    """img2dataset's pools, killed mid-run, leak semaphores that multiprocessing's resource tracker reports
    as it exits: after our last line, unless the tracker writes to download.log."""
    root, base = server
    put_png(root / "red.png", (255, 0, 0))
    rows = [{"url": f"{base}/red.png?{i}", "caption": f"red {i}"} for i in range(4000)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "urls.parquet")
    out = tmp_path / "shards"
    args = ["download", str(tmp_path / "urls.parquet"), str(out), "--processes", "1", "--threads", "2"]
    args += ["--samples-per-shard", "100", "--image-size", "16"]
    result = interrupt(args, lambda: any(out.glob("*_stats.json")), tmp_path)
    assert_interrupted(result)


# -------------------------------------------------------------------------------- download: url schemes


def test_only_http_and_https_urls_are_fetchable_unless_allowed():
    urls = ["http://a/1.png", "HTTPS://a/2.png", "file:///etc/passwd", " file:///etc/passwd", "ftp://a/3",
            "data:image/png;base64,AAAA", "/etc/passwd", None]  # fmt: skip
    table = pa.table({"url": urls, "caption": [str(i) for i in range(len(urls))]})
    kept, skipped = fetchable_rows(table, DownloadConfig())
    assert kept["url"].to_pylist() == ["http://a/1.png", "HTTPS://a/2.png", None]  # None: img2dataset's error
    assert skipped == {UNSUPPORTED_SCHEME: 5}
    kept, skipped = fetchable_rows(table, DownloadConfig(allow_local_urls=True))
    assert kept.num_rows == len(urls) and not skipped


def test_download_skips_file_urls_unless_allow_local_urls(tmp_path, server):
    root, base = server
    put_png(root / "red.png", (255, 0, 0))
    put_png(root / "green.png", (0, 255, 0))
    private = tmp_path / "private.png"  # a file of this machine, outside anything served
    put_png(private, (0, 0, 255))
    table = tmp_path / "urls.csv"
    table.write_text(f"url,caption\n{base}/red.png,red\nfile://{private},private\n{base}/green.png,green\n")
    options = ["--processes", "1", "--threads", "2", "--image-size", "16", "--timeout", "5"]

    result = run_cli("download", str(table), str(tmp_path / "safe"), *options)
    assert result.returncode == 0, result.stderr
    assert f"1 rows skipped (1 × {UNSUPPORTED_SCHEME}" in result.stdout
    assert sorted(s.caption for s in iter_samples(str(tmp_path / "safe"))) == ["green", "red"]

    result = run_cli("download", str(table), str(tmp_path / "trusted"), *options, "--allow-local-urls")
    assert result.returncode == 0, result.stderr
    assert "skipped" not in result.stdout
    assert sorted(s.caption for s in iter_samples(str(tmp_path / "trusted"))) == ["green", "private", "red"]


def test_a_url_list_of_only_local_files_is_refused_in_one_line(tmp_path):
    (tmp_path / "urls.csv").write_text("url,caption\nfile:///etc/passwd,secret\n")
    result = run_cli("download", str(tmp_path / "urls.csv"), str(tmp_path / "out"))
    assert_one_line_error(result, "--allow-local-urls")


# -------------------------------------------------------------------------- select --where: score files only


@pytest.fixture
def scores(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    folder = tmp_path / "scores"
    for shard in range(2):
        keys = [f"{shard:05d}{i:04d}" for i in range(40)]
        image = unit(rng.normal(size=(40, 8)))
        text = unit(image + rng.normal(size=(40, 8)))
        write_scores(folder, f"{shard:05d}.tar", keys, image, text)
    return folder


def select_args(scores: Path, out: Path) -> list[str]:
    return ["select", str(scores), "-o", str(out), "--ratio", "0.5", "--super-batch", "16", "--chunks", "2"]


@pytest.mark.parametrize(
    "where",
    [
        "(SELECT count(*) FROM read_csv('/etc/passwd')) > 0",
        "(SELECT count(*) FROM read_text('{secret}')) > 0",
        "(SELECT count(*) FROM read_parquet('{scores}/../secret.txt')) > 0",
        "(SELECT count(*) FROM glob('/etc/*')) > 0",
    ],
)
def test_where_cannot_read_files_outside_the_score_folders(tmp_path, scores, where):
    (tmp_path / "secret.txt").write_text("not for --where\n")
    where = where.format(secret=tmp_path / "secret.txt", scores=scores)
    result = run_cli(*select_args(scores, tmp_path / "m"), "--where", where)
    assert_one_line_error(result, "--where")
    assert "score files only" in result.stderr
    assert not (tmp_path / "m" / "manifest.parquet").exists()


@pytest.mark.parametrize(
    ("where", "column"), [("similarity > 0.2", "similarity"), ("image_emb[1] > 0", None)]
)
def test_where_still_reads_the_score_columns(tmp_path, scores, where, column):
    out = tmp_path / "m"
    result = run_cli(*select_args(scores, out), "--where", where)
    assert result.returncode == 0, result.stderr
    table = pa.concat_tables(pq.read_table(path) for path in sorted(scores.glob("*.parquet")))
    values = (
        table["similarity"].to_numpy() if column else np.array([e[0] for e in table["image_emb"].to_pylist()])
    )
    passing = dict(zip(table["key"].to_pylist(), (values > (0.2 if column else 0)).tolist(), strict=True))
    chosen = read_manifest(out, ["key"])["key"].to_pylist()
    assert chosen and all(passing[key] for key in chosen)
    assert 0 < sum(passing.values()) < len(passing)  # the predicate did filter
