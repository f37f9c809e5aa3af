"""Shared fixtures. Tests run offline: no hub downloads, no update checks."""

from __future__ import annotations

import os
import subprocess
import sys

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
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )
