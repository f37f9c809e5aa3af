"""`--help` with options grouped under headings, in click's plain layout (docstrings re-wrap to the
terminal and their example blocks keep their lines, which rich's layout does not do)."""

from __future__ import annotations

import click
from typer.core import TyperCommand


class GroupedHelp(TyperCommand):
    """Lists arguments, then options under their `rich_help_panel` heading (`Options` when none), headings
    in the order their first option is declared."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                heading = "Arguments"
            else:
                heading = getattr(param, "rich_help_panel", None) or "Options"
            sections.setdefault(heading, []).append(record)
        for heading, records in sections.items():
            with formatter.section(heading):
                formatter.write_dl(records)
