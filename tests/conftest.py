"""Shared fixtures. Tests run offline: no hub downloads, no update checks.

They test this checkout, whatever is installed: its `curate`, and its `cli/` folder under the name the CLI
installs as, `curate_cli`, in this process and in every process it starts (CLI smoke tests, the example
pipeline's make, Ray workers).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import http.server
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _cli_package_folder() -> str:
    """A folder holding a package `curate_cli` whose modules are found in cli/: an installed `curate_cli`
    (an editable install of another checkout, say) would otherwise shadow the one under test."""
    folder = tempfile.mkdtemp(prefix="curate-tests-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.mkdir(os.path.join(folder, "curate_cli"))
    with open(os.path.join(folder, "curate_cli", "__init__.py"), "w") as handle:
        handle.write(f"__path__ = [{str(REPO / 'cli')!r}]\n")
    return folder


_IMPORT_PATH = [_cli_package_folder(), str(REPO)]
sys.path[:0] = _IMPORT_PATH
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [*_IMPORT_PATH, os.environ.get("PYTHONPATH")]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# Under pytest-xdist the workers share the cores: each gets its share of threads (it and every process it
# starts), since torch's OpenMP threads busy-wait and oversubscribed cores slow every worker down.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

import pytest  # noqa: E402

from curate.score import ScoreConfig, score_shards  # noqa: E402
from curate.synth import SynthConfig, synthesize  # noqa: E402


@pytest.fixture(scope="session")
def small_synth(tmp_path_factory) -> str:
    """A 400-pair synthetic crawl in 4 shards, made once per test session; treat it as read-only."""
    out = str(tmp_path_factory.mktemp("synth") / "data")
    synthesize(SynthConfig(n=400, seed=7, samples_per_shard=100, eval_per_class=2), out, workers=1)
    return out


@pytest.fixture(scope="module")
def scores(small_synth, tmp_path_factory) -> str:
    """One shard's score folder by a random-init model: an input that takes select, dedup and report as far
    as writing their output. A module that needs other scores defines its own `scores`."""
    out = str(tmp_path_factory.mktemp("scored") / "scores")
    config = ScoreConfig(model="siglip-tiny", allow_random_init=True, batch_size=64, workers=0)
    score_shards(f"{small_synth}/web/00000.tar", out, config)
    return out


# Rich colours a console made on a terminal (`pytest -s`) whatever it later writes to; a pipe has none.
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def run_cli(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run the `curate` entry point in this process, as `curate ARGS` would from `cwd`: its exit code and
    what it wrote to stdout and stderr, as a CompletedProcess.

    The same code as the console script runs, without paying an interpreter and torch import per call.
    The environment, working directory and sys.argv are restored afterwards. An unexpected exception
    becomes exit code 1 with its traceback on stderr, as in a process of its own.
    """
    from curate_cli.main import main

    stdout, stderr = io.StringIO(), io.StringIO()
    saved_argv, saved_cwd, saved_env = sys.argv, os.getcwd(), dict(os.environ)
    sys.argv = ["curate", *args]
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                main()
                code = 0
            except SystemExit as exiting:
                code = _exit_status(exiting, stderr)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    outputs = (_COLOUR.sub("", s.getvalue()) for s in (stdout, stderr))
    return subprocess.CompletedProcess(["curate", *args], code, *outputs)


def _exit_status(exiting: SystemExit, stderr: io.StringIO) -> int:
    # As the interpreter turns sys.exit(x) into a status: None is 0, a non-integer is printed and is 1.
    if exiting.code is None or isinstance(exiting.code, int):
        return exiting.code or 0
    print(exiting.code, file=stderr)
    return 1


def run_cli_subprocess(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run `curate ARGS` in a process of its own, as a user's shell would: for what only a fresh
    interpreter shows (imports, the console entry point, a Ray driver of its own)."""
    return subprocess.run(
        [sys.executable, "-m", "curate_cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    delay = 0.0  # seconds before each answer (a slow server keeps a download running)

    def do_GET(self):
        time.sleep(self.delay)
        super().do_GET()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def http_server(root: Path, delay: float = 0.0) -> Iterator[str]:
    """Serve `root` on 127.0.0.1 (a free port) while the block runs; yields its base URL."""
    handler = type("Handler", (_QuietHandler,), {"delay": delay})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
