"""The `curate` command: assembles the subcommands and turns user errors into one line on stderr."""

from __future__ import annotations

import sys
from typing import Annotated

INTERRUPTED = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C

# A Ctrl-C while the commands import (torch alone takes a second or more) comes before `main` can catch
# it: the same one line, not a traceback from deep inside an import.
try:
    import click
    import typer
    from rich.markup import escape
    from typer.core import TyperGroup

    from curate import __version__
    from curate.errors import CurateError, first_line
    from curate_cli.console import err
    from curate_cli.dedup import dedup_command
    from curate_cli.download import download_command
    from curate_cli.evaluate import evaluate_command
    from curate_cli.export import export_command
    from curate_cli.help import GroupedHelp
    from curate_cli.imports import import_app
    from curate_cli.query import query_command
    from curate_cli.report import report_command
    from curate_cli.score import models, score
    from curate_cli.select import select_command
    from curate_cli.synth import synth
    from curate_cli.train import train_command
except KeyboardInterrupt:
    sys.stderr.write("error: interrupted\n")
    sys.exit(INTERRUPTED)


class _PipelineOrder(TyperGroup):
    """Lists the commands in `LISTED` order: typer puts command groups (`import`) after every command."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.commands, key=lambda name: LISTED.index(name) if name in LISTED else len(LISTED))


app = typer.Typer(
    name="curate",
    cls=_PipelineOrder,
    help="Curate image-text data with JEST (joint example selection) and train SigLIP models on the result.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"curate {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Curate image-text data with JEST (joint example selection) and train SigLIP models on the result.

    Pipeline: download → score → select → export → train → eval. Start with `curate synth data` for a
    synthetic crawl to try every step on.
    """


# In pipeline order, which is the order `curate --help` lists them in.
COMMANDS = (
    ("synth", synth, "Make a noisy synthetic web crawl plus curated and eval sets (for demos and tests)."),
    ("download", download_command, "Download (url, caption) rows into img2dataset shards; retry failures."),
    ("score", score, "Embed every sample with a reference model into one Parquet file per shard."),
    ("dedup", dedup_command, "Drop semantic near duplicates (SemDeDup) by reference image embeddings."),
    ("select", select_command, "Choose samples with JEST over seeded super-batches; write a manifest."),
    ("export", export_command, "Copy a manifest's samples into new webdataset shards, in training order."),
    ("train", train_command, "Train a SigLIP model on shards or a manifest, optionally with online JEST."),
    ("eval", evaluate_command, "Zero-shot accuracy and image-text retrieval recall on an eval set."),
    ("query", query_command, "SQL (DuckDB) over scores, manifests, shards and runs' batches."),
    ("report", report_command, "Plots and one static HTML page from runs, scores and manifests."),
    ("models", models, "List the built-in models and how to use open_clip models and checkpoints."),
)
# Commands with subcommands of their own: (name, typer app, purpose, the command it is listed after).
GROUPS = (
    (
        "import",
        import_app,
        "Write a score folder from the embeddings a pool ships (DataComp, LAION): no image, no GPU.",
        "download",
    ),
)
for name, command, purpose in COMMANDS:
    app.command(name, short_help=purpose, cls=GroupedHelp)(command)
for name, group, purpose, _ in GROUPS:
    app.add_typer(group, name=name, short_help=purpose)


def listed_order() -> tuple[str, ...]:
    """The names as `curate --help` lists them: COMMANDS in pipeline order, each group after its command."""
    names = [name for name, _, _ in COMMANDS]
    for name, _, _, after in GROUPS:
        names.insert(names.index(after) + 1, name)
    return tuple(names)


LISTED = listed_order()


def main() -> None:
    """Console entry point: one-line errors, exit codes 1 (bad input), 2 (bad usage), 130 (interrupted)."""
    # A bare `curate` shows the help: typer would raise it as a usage error, printed here as one line.
    args = sys.argv[1:] or ["--help"]
    try:
        result = app(args, standalone_mode=False, prog_name="curate")
    except CurateError as error:
        _fail(str(error), 1)
    except OSError as error:  # the user's environment: -o naming a file, a read-only folder, a full disk
        _fail(_os_error_message(error), 1)
    except (typer.Abort, KeyboardInterrupt):
        _fail("interrupted", INTERRUPTED)
    except Exception as error:
        if not _is_click_error(error):
            raise  # a bug: keep its traceback
        _fail(f"{error.format_message()}{_usage_hint(error)}", error.exit_code)
    if result == INTERRUPTED:  # typer (0.29) turns a Ctrl-C in a command into this code, returned silently
        _fail("interrupted", INTERRUPTED)
    sys.exit(result if isinstance(result, int) else 0)


def _is_click_error(error: Exception) -> bool:
    """click's own exceptions (UsageError, BadParameter, FileError, ...), recognised by their public
    interface: typer 0.29 raises vendored copies of them from a private module, older typer click's."""
    has_code = isinstance(getattr(error, "exit_code", None), int)
    return has_code and callable(getattr(error, "format_message", None))


def _usage_hint(error: Exception) -> str:
    context = getattr(error, "ctx", None)  # set on usage errors; a subcommand's has the root as its parent
    if error.exit_code == 2 and context is not None and context.parent is not None:
        return f" (see: curate {context.info_name} --help)"
    return ""


def _os_error_message(error: OSError) -> str:
    """`PATH: reason`, as the shell words it (`A -> B: reason` for a rename); an OSError raised with a
    message only (pyarrow's, say) keeps its message."""
    if not error.strerror:
        return first_line(error)
    if error.filename is None:
        return error.strerror
    path = str(error.filename) if error.filename2 is None else f"{error.filename} -> {error.filename2}"
    return f"{path}: {error.strerror}"


def _fail(message: str, code: int) -> None:
    # Escaped: a message's own brackets (pip install 'jest-curate[ray]') are text, not rich markup.
    err.print(f"[bold red]error:[/] {escape(' '.join(message.split()))}", markup=True, highlight=False)
    sys.exit(code)
