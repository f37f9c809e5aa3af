import json
from pathlib import Path

from conftest import run_cli

from curate import __version__


def test_help_lists_every_command_with_its_purpose():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "synth" in result.stdout and "download" in result.stdout
    assert "Make a noisy synthetic web crawl" in result.stdout


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"curate {__version__}"


def assert_one_line_error(result, *fragments: str, code: int | None = None):
    assert result.returncode != 0 if code is None else result.returncode == code
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_bad_usage_gives_one_line_and_exit_code_2(tmp_path):
    assert_one_line_error(run_cli("synth", str(tmp_path), "--n", "many"), "--n", code=2)
    assert_one_line_error(run_cli("synth"), "Missing argument 'OUT'", code=2)
    assert_one_line_error(run_cli("synth", str(tmp_path), "--bogus"), "--bogus", code=2)
    assert_one_line_error(run_cli("frobnicate"), "frobnicate", code=2)


def test_bad_values_give_one_line_and_exit_code_1(tmp_path):
    assert_one_line_error(run_cli("synth", str(tmp_path / "a"), "--n", "0"), "--n", code=1)
    assert_one_line_error(
        run_cli("synth", str(tmp_path / "b"), "--junk", "0.9", "--misaligned", "0.5"), code=1
    )


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
