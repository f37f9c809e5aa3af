"""Shared fixtures. Tests run offline: no hub downloads, no update checks.

They test this checkout, whatever is installed: its `curate`, and its `cli/` folder under the name the CLI
installs as, `curate_cli`, in this process and in every process it starts (CLI smoke tests, the example
pipeline's make, Ray workers).
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
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

import pytest  # noqa: E402

from curate.synth import SynthConfig, synthesize  # noqa: E402


@pytest.fixture(scope="session")
def small_synth(tmp_path_factory) -> str:
    """A 400-pair synthetic crawl in 4 shards, made once per test session; treat it as read-only."""
    out = str(tmp_path_factory.mktemp("synth") / "data")
    synthesize(SynthConfig(n=400, seed=7, samples_per_shard=100, eval_per_class=2), out, workers=1)
    return out


def run_cli(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run the real `curate` entry point in a subprocess, as a user's shell would."""
    return subprocess.run(
        [sys.executable, "-m", "curate_cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )
