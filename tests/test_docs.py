"""The documentation against the CLI: the generated command reference lists every option of every command,
and every `curate ...` command quoted in a code block of README.md or docs/ parses (click's parser, nothing
executed).

The reference is generated exactly as `make docs` generates it (its `typer ... utils docs` line is read from
the Makefile), in process, so the app is imported once.
"""

from __future__ import annotations

import functools
import re
import shlex
from pathlib import Path

import pytest
import typer
import typer.main
from typer.cli import app as typer_cli
from typer.testing import CliRunner

from curate_cli.main import app

ROOT = Path(__file__).resolve().parent.parent
GENERATED = Path("docs/reference/cli.md")  # written by `make docs`, never committed; not a source of commands
SHELL_OPERATORS = {"|", "||", "&&", ";", "&", "(", ")", ">", ">>", "<", "2>", "2>&1"}
NOT_SHELL = {"python", "py", "json", "sql", "toml", "yaml"}  # fenced blocks whose lines are not shell


@functools.cache  # typer builds the click command afresh at each call: once is enough
def root_command():
    return typer.main.get_command(app)


def commands(group=None, path=("curate",)):
    """(path, command) for every command and subcommand of the app, the root included."""
    group = group or root_command()
    yield path, group
    for name in getattr(group, "commands", {}) or {}:
        yield from commands(group.commands[name], (*path, name))


# ---------------------------------------------------------------------------------------------- reference


def make_docs_arguments() -> list[str]:
    """The arguments `make docs` gives typer's CLI, from the Makefile's recipe line."""
    line = next(line for line in (ROOT / "Makefile").read_text().splitlines() if " utils docs " in line)
    words = shlex.split(line.strip())
    return words[next(i for i, w in enumerate(words) if w.endswith("/typer")) + 1 :]


def generate_reference(out: Path) -> str:
    words = make_docs_arguments()
    words[words.index("--output") + 1] = str(out)
    result = CliRunner().invoke(typer_cli, words)
    assert result.exit_code == 0, result.output
    return out.read_text()


def sections(markdown: str) -> dict[tuple[str, ...], str]:
    """The generated reference split by command: `## `curate select`` starts the section of ("curate",
    "select"); the text before the first such heading is the root's."""
    parts = re.split(r"^#+ `(curate(?: [\w-]+)*)`\s*$", markdown, flags=re.MULTILINE)
    found = {("curate",): parts[0]}
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        found[tuple(heading.split())] = body
    return found


def documented_options(section: str) -> set[str]:
    """Every option name in a section's bullets: `* `-o, --output SCORES`: ...` gives -o and --output."""
    names = set()
    for record in re.findall(r"^\* `([^`]+)`", section, flags=re.MULTILINE):
        for alternative in re.split(r",\s*|\s+/\s+", record):
            names.add(alternative.split()[0])
    return names


def test_the_generated_reference_lists_every_option_of_every_command(tmp_path):
    reference = sections(generate_reference(tmp_path / "cli.md"))
    checked = 0
    for path, command in commands():
        name = " ".join(path)
        assert path in reference, f"`{name}` has no section in the generated reference"
        documented = documented_options(reference[path])
        for param in command.params:
            if param.param_type_name != "option" or getattr(param, "hidden", False):
                continue
            for option in (*param.opts, *param.secondary_opts):
                assert option in documented, f"`{name}`: option {option} is missing from the reference"
                checked += 1
    assert checked > 100  # the walk found the app's options: an empty walk would pass anything


# ------------------------------------------------------------------------------------------- quoted commands


def code_blocks(text: str):
    """(language, first line number, lines) of every fenced code block, at any indentation."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^(\s*)(```+)\s*([\w-]*)", lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, language = opening.groups()
        body, start = [], i + 1  # the opening fence's line number
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        yield language.lower(), start, body
        i += 1


def shell_lines(language: str, body: list[str]):
    """The shell command lines of a block, `\\` continuations joined: in a console block only the `$ `
    prompts (the rest is output)."""
    joined, pending = [], ""
    for line in body:
        if language == "console":
            if not pending and not line.startswith("$ "):
                continue
            line = line[2:] if not pending else line
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    return joined


def curate_invocations(line: str) -> list[list[str]]:
    """The argument lists of every `curate` (or `python -m curate`) call in a shell line: split on pipes,
    `&&`, `;` and redirections, comments dropped, quotes removed as the shell would."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError:  # an unbalanced quote: not a command line (prose or output)
        return []
    calls, simple = [], []
    for token in [*tokens, ";"]:
        if token not in SHELL_OPERATORS:
            simple.append(token)
            continue
        words = [w for w in simple if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", w)]  # VAR=value first
        for k, word in enumerate(words):
            program = word.rsplit("/", 1)[-1]
            if program == "curate" and (k == 0 or words[k - 1] == "-m"):
                calls.append(words[k + 1 :])
                break
        simple = []
    return calls


def parse_error(args: list[str]) -> str | None:
    """None when click's parser accepts `curate ARGS` (options, arguments, values and their callbacks),
    else its message. Nothing runs: only the contexts are made."""
    group, name, context = root_command(), "curate", None
    try:
        while True:
            leading = 0  # the group's own options (flags such as --version) come before the subcommand
            while leading < len(args) and args[leading].startswith("-"):
                leading += 1
            if not hasattr(group, "resolve_command") or leading == len(args):
                group.make_context(name, list(args), parent=context, resilient_parsing=False)
                return None
            context = group.make_context(name, list(args), parent=context, resilient_parsing=False)
            name, group, args = group.resolve_command(context, list(args[leading:]))
    except Exception as error:
        code = getattr(error, "exit_code", None)
        if code == 0:  # --help or --version: a valid command line that exits at once
            return None
        if code is None or not callable(getattr(error, "format_message", None)):
            raise
        return error.format_message()


def quoted_commands():
    """(file:line of the block, the command, its arguments) for every `curate` call in a code block of
    README.md or docs/."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for path in files:
        relative = path.relative_to(ROOT)
        if relative == GENERATED:
            continue
        for language, start, body in code_blocks(path.read_text()):
            if language in NOT_SHELL:
                continue
            for line in shell_lines(language, body):
                for args in curate_invocations(line):
                    yield f"{relative}:{start}", f"curate {shlex.join(args)}", args


QUOTED = list(quoted_commands())


def test_the_docs_quote_many_commands():
    # an extraction that broke (a fence or prompt no longer recognised) would leave nothing to check
    assert len(QUOTED) > 50
    assert {args[0] for *_, args in QUOTED if args} >= {
        "synth",
        "score",
        "select",
        "export",
        "train",
        "report",
    }


@pytest.mark.parametrize("block,command,args", QUOTED, ids=[f"{b}:{c}"[:120] for b, c, _ in QUOTED])
def test_every_quoted_command_parses(block, command, args):
    error = parse_error(args)
    if error and any("$" in word for word in args) and "no such option" not in error.lower():
        pytest.skip(f"a shell variable stands for a value: {error}")
    assert error is None, f"{block}: `{command}` does not parse: {error}"


def test_the_checker_refuses_what_the_cli_refuses():
    assert parse_error(["select", "scores", "-o", "m", "--ratio", "0.8"]) is None
    assert parse_error(["--version"]) is None
    assert "--no-such-option" in parse_error(
        ["select", "scores", "-o", "m", "--ratio", "0.8", "--no-such-option"]
    )
    assert parse_error(["select", "scores", "-o", "m", "--ratio", "high"])  # not a number
    assert parse_error(["select", "scores", "--ratio", "0.8"])  # -o is required
    assert parse_error(["selekt", "scores"])  # no such command
    assert curate_invocations("torchrun --nproc-per-node 8 -m curate train shards/ -o runs/x && ls") == [
        ["train", "shards/", "-o", "runs/x"]
    ]
    assert curate_invocations("OMP_NUM_THREADS=1 .venv/bin/curate eval ckpt ev | tee log  # a comment") == [
        ["eval", "ckpt", "ev"]
    ]
