import contextlib
import errno
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli, run_cli_subprocess

from curate import __version__
from curate_cli.main import COMMANDS, GROUPS, LISTED

# ---------------------------------------------------------------------------- one real process per command

# `curate --help` imports every command's module, so one process finds an import that fails in any of them.
SMOKE_RUNS = {"--version": ("--version",), "--help": ("--help",)}


@pytest.fixture(scope="module")
def smoke_results() -> dict:
    """`curate --version` and `curate --help`, each in a fresh interpreter, as the console script runs
    them: what in-process runs cannot show (an import that fails, `python -m`)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = pool.map(lambda args: run_cli_subprocess(*args), SMOKE_RUNS.values())
        return dict(zip(SMOKE_RUNS, results, strict=True))


def test_version_in_a_process_of_its_own(smoke_results):
    result = smoke_results["--version"]
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"curate {__version__}\n"


@pytest.mark.parametrize("command", [name for name, _, _ in COMMANDS])
def test_each_command_has_help(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stdout.startswith(f"Usage: curate {command} [OPTIONS]")


def test_help_in_a_process_of_its_own_lists_the_commands(smoke_results):
    result = smoke_results["--help"]
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert listed_commands(result.stdout) == expected_listing()


# ------------------------------------------------------------------------------------------------- help


def expected_listing() -> list[tuple[str, str]]:
    """(name, purpose) of every command and command group, in pipeline order (`LISTED`)."""
    purposes = {name: purpose for name, _, purpose in COMMANDS} | {name: p for name, _, p, _ in GROUPS}
    return [(name, purposes[name]) for name in LISTED]


def listed_commands(help_text: str) -> list[tuple[str, str]]:
    """The (name, purpose) rows of `curate --help`'s Commands section, wrapped lines joined."""
    rows: list[list[str]] = []
    for line in help_text.split("\nCommands:\n", 1)[1].splitlines():
        if re.match(r"  \S", line):
            rows.append(line.split(maxsplit=1))
        elif line.strip():
            rows[-1][1] += " " + line.strip()
    return [(name, " ".join(purpose.split())) for name, purpose in rows]


def test_help_lists_every_command_with_its_purpose_in_pipeline_order():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    assert listed_commands(result.stdout) == expected_listing()
    assert LISTED.index("import") == LISTED.index("download") + 1  # a group sits after its command


def test_train_help_groups_its_options_under_headings():
    text = run_cli("train", "--help").stdout
    lines = text.splitlines()
    headings = [line[:-1] for line in lines if re.fullmatch(r"[A-Z][\w ]*:", line)]
    assert headings == [
        "Arguments",
        "Options",
        "Model",
        "Data",
        "Optimisation",
        "Evaluation and checkpoints",
        "Devices and processes",
        "Online JEST",
    ]

    def section_of(option: str) -> str:
        at = next(i for i, line in enumerate(lines) if line.lstrip().startswith(option))
        return next(line[:-1] for line in reversed(lines[:at]) if line[:-1] in headings)

    assert section_of("--online-scope") == "Online JEST" and section_of("--manifest") == "Data"
    assert section_of("--collective-timeout") == "Devices and processes"


def test_curate_alone_prints_the_help():
    result = run_cli()
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == run_cli("--help").stdout


# ------------------------------------------------------------------------------- errors and exit codes


def assert_one_line_error(result, *fragments: str, code: int | None = None):
    assert result.returncode != 0 if code is None else result.returncode == code
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_bad_usage_gives_one_line_and_exit_code_2(tmp_path):
    assert_one_line_error(run_cli("synth", str(tmp_path), "--n", "many"), "--n", code=2)
    assert_one_line_error(run_cli("synth"), "Missing argument 'OUT'", "(see: curate synth --help)", code=2)
    assert_one_line_error(run_cli("synth", str(tmp_path), "--bogus"), "--bogus", code=2)
    assert_one_line_error(run_cli("frobnicate"), "frobnicate", code=2)


def test_bad_values_give_one_line_and_exit_code_1(tmp_path):
    assert_one_line_error(run_cli("synth", str(tmp_path / "a"), "--n", "0"), "--n", code=1)
    assert_one_line_error(
        run_cli("synth", str(tmp_path / "b"), "--junk", "0.9", "--misaligned", "0.5"), code=1
    )


def test_an_interrupted_command_gives_one_line_and_exit_code_130(tmp_path, monkeypatch):
    def pressed_ctrl_c(*args, **kwargs):  # where a user's Ctrl-C lands: inside the library's work
        raise KeyboardInterrupt

    monkeypatch.setattr("curate_cli.synth.synthesize", pressed_ctrl_c)
    assert_one_line_error(run_cli("synth", str(tmp_path / "data")), "interrupted", code=130)


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug, not bad input")

    monkeypatch.setattr("curate_cli.synth.synthesize", broken)
    result = run_cli("synth", str(tmp_path / "data"))
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ZeroDivisionError: a bug, not bad input" in result.stderr


# ---------------------------------------------------------- OSErrors from the user's environment: one line


def output_commands(small_synth: str, scores: str, url_table: Path) -> dict[str, list[str]]:
    """Each command that makes an output folder, up to its output argument (which comes last)."""
    model = ["--model", "siglip-tiny", "--allow-random-init"]
    return {
        "score": ["score", f"{small_synth}/web/00000.tar", *model, "-o"],
        "select": ["select", scores, "--ratio", "0.5", "-o"],
        "dedup": ["dedup", scores, "--threshold", "0.9", "-o"],
        "report": ["report", "--scores", scores, "-o"],
        "download": ["download", str(url_table)],
    }


@pytest.fixture
def url_table(tmp_path) -> Path:
    path = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": ["http://127.0.0.1:1/a.jpg"], "caption": ["a red circle"]}), path)
    return path


@pytest.mark.parametrize("command", ["score", "select", "dedup", "report", "download"])
def test_an_output_folder_that_is_a_file_gives_one_line(command, tmp_path, small_synth, scores, url_table):
    taken = tmp_path / "taken"
    taken.write_text("mine\n")
    args = output_commands(small_synth, scores, url_table)[command]
    result = run_cli(*args, str(taken))
    assert_one_line_error(result, code=1)
    assert result.stderr == f"error: {taken}: {os.strerror(errno.EEXIST)}\n"
    assert taken.read_text() == "mine\n"


def test_a_read_only_folder_gives_one_line(tmp_path, scores):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with contextlib.suppress(PermissionError):
            (locked / "probe").mkdir()
            pytest.skip("permissions do not stop this process (root): run as a user to test this")
        result = run_cli("select", scores, "--ratio", "0.5", "-o", str(locked / "manifest"))
    finally:
        locked.chmod(0o755)
    assert_one_line_error(result, str(locked / "manifest"), os.strerror(errno.EACCES), code=1)
    assert not list(locked.iterdir())


def test_query_into_a_missing_folder_gives_one_line(tmp_path, scores):
    missing = tmp_path / "missing"
    sql = "SELECT count(*) AS n FROM scores"
    result = run_cli("query", sql, "--scores", scores, "-o", f"{missing}/n.csv")
    assert_one_line_error(result, str(missing), os.strerror(errno.ENOENT), code=1)
    assert not missing.exists()


# ----------------------------------------------------------------------------------------------- synth


def test_synth_from_the_command_line(tmp_path):
    out = tmp_path / "data"
    result = run_cli(
        "synth",
        str(out),
        "--n",
        "120",
        "--seed",
        "3",
        "--samples-per-shard",
        "50",
        "--eval-per-class",
        "1",
        "--image-format",
        "png",
        "--workers",
        "1",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("wrote 120 web pairs") and str(out) in result.stdout
    sizes = json.loads((out / "web/sizes.json").read_text())
    assert list(sizes) == ["00000.tar", "00001.tar", "00002.tar"] and sum(sizes.values()) == 120
    assert sorted(p.name for p in Path(out).iterdir()) == ["curated", "eval", "synth.json", "web"]
    again = run_cli(
        "synth",
        str(out),
        "--n",
        "120",
        "--seed",
        "3",
        "--samples-per-shard",
        "50",
        "--eval-per-class",
        "1",
        "--image-format",
        "png",
        "--workers",
        "1",
    )
    assert "(4 shards already there)" in again.stdout
    other = run_cli("synth", str(out), "--n", "121")
    assert_one_line_error(other, "other settings", code=1)
