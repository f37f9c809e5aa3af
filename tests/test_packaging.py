"""The wheel as users get it: built from a copy of this checkout, installed into a fresh virtual environment
and run from a folder outside the checkout, so that nothing here is on its path."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow  # builds a wheel and a virtual environment

REPO = Path(__file__).resolve().parent.parent
# Build outputs a checkout may hold: a stale build/lib would slip files that no longer exist into the wheel.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache", "demo"
)


def run(*command: str | Path, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    shutil.copytree(REPO, work / "source", ignore=NOT_SOURCE)
    # No build isolation: the build backend comes from this environment, as nothing can be downloaded.
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
        "-w", work / "dist", work / "source")  # fmt: skip
    (built,) = (work / "dist").glob("*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv holding only the wheel; its dependencies are this environment's, seen through a .pth
    line (a path, so the .pth files there, such as an editable install's, are not run)."""
    venv = tmp_path_factory.mktemp("venv") / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    Path(purelib, "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # Outside the checkout: with its PYTHONPATH, pip would see the editable install's egg-info there and
    # call the wheel "already installed". --force-reinstall: the same version is in the dependencies' path.
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--force-reinstall", "-q",
        wheel, env=outside_the_checkout())  # fmt: skip
    return venv


def outside_the_checkout() -> dict:
    """The environment of a user's shell: no PYTHONPATH (the test session's points into this checkout)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_the_wheel_holds_every_module_and_the_model_configs_but_no_top_level_cli(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {f"curate/{p.relative_to(REPO / 'curate')}" for p in (REPO / "curate").rglob("*.py")}
    sources |= {f"curate_cli/{p.relative_to(REPO / 'cli')}" for p in (REPO / "cli").glob("*.py")}
    assert sources - names == set()  # a subpackage missing from pyproject's packages list shows here
    configs = {f"curate/models/configs/{p.name}" for p in (REPO / "curate/models/configs").glob("*.json")}
    assert configs and configs <= names
    assert "curate_cli/main.py" in names and not any(name.startswith("cli/") for name in names)
    (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "curate = curate_cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_installed_command_runs_outside_the_checkout(installed, tmp_path):
    env, python, curate = outside_the_checkout(), installed / "bin" / "python", installed / "bin" / "curate"
    where = run(python, "-c", "import curate, curate_cli; print(curate.__file__, curate_cli.__file__)",
                cwd=tmp_path, env=env).stdout.split()  # fmt: skip
    assert all(Path(path).is_relative_to(installed) for path in where), where

    models = run(curate, "models", cwd=tmp_path, env=env)
    assert "siglip-tiny" in models.stdout

    run(curate, "synth", "data", "--n", "64", "--samples-per-shard", "32", "--eval-per-class", "1",
        "--workers", "1", cwd=tmp_path, env=env)  # fmt: skip
    shards = sorted(p.name for p in (tmp_path / "data/web").glob("*.tar"))
    assert shards == ["00000.tar", "00001.tar"]

    # The built-in model's config is read from the installed package data.
    run(curate, "score", "data/web", "-o", "scores", "--model", "siglip-tiny", "--allow-random-init",
        "--workers", "0", cwd=tmp_path, env=env)  # fmt: skip
    assert sum(pq.read_table(tmp_path / "scores" / f"{i:05d}.parquet").num_rows for i in range(2)) == 64
