"""One `curate` command in a fresh process of its own: its wall seconds and the peak resident set of that
process alone (children it starts, Ray's workers or DataLoader workers, are not counted in RUSAGE_SELF)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass

# The CLI in a child that reports its own peak resident set (kB on Linux) as it exits.
DRIVER = """import resource, sys
from curate_cli.main import main
sys.argv = ["curate", *sys.argv[1:]]
try:
    main()
except SystemExit as exit:
    code = exit.code
else:
    code = 0
print(f"peak_rss_kb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
sys.exit(code)
"""


@dataclass
class Measured:
    seconds: float
    peak_mib: float
    line: str  # the command's last line on stdout: its summary


def run_measured(*args: str) -> Measured:
    """`curate ARGS` offline in a fresh process; a failure stops the benchmark with the command's error."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", DRIVER, *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
        raise SystemExit(
            f"curate {' '.join(args[:2])} failed: {errors[-1] if errors else done.stderr[-2000:]}"
        )
    peak = next(line for line in done.stderr.splitlines() if line.startswith("peak_rss_kb="))
    lines = done.stdout.strip().splitlines()
    return Measured(seconds, int(peak.split("=")[1]) / 1024, lines[-1] if lines else "")
