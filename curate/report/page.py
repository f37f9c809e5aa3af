"""The report's HTML: one static page, inline CSS, no script, images as PNG files beside it.

It opens from file:// in any browser (no server, no network: nothing is fetched from elsewhere), and the
folder can be copied or zipped as a whole. No timestamp is written, so the same inputs give the same page.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field

from curate import __version__

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 24px; margin: 8px 0 4px; } h2 { font-size: 19px; margin: 32px 0 8px;
  border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.inputs { color: #555; font-size: 13px; } .inputs code { background: #f4f4f4; padding: 0 3px; }
figure { margin: 14px 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; max-width: 900px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 3px 10px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #8a5a00; font-size: 13px; }
"""


@dataclass(frozen=True)
class Figure:
    file: str  # PNG name inside the report folder
    png: bytes
    caption: str  # plain text, escaped when written


@dataclass(frozen=True)
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[object]]  # numbers are right-aligned; everything is escaped
    caption: str = ""


@dataclass
class Section:
    title: str
    anchor: str
    text: str = ""
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures_first: bool = False  # tables as detail under the figures, rather than a summary above them


def render(title: str, inputs: Sequence[tuple[str, str]], sections: Sequence[Section]) -> str:
    """The whole page; `inputs` are (kind, path) pairs listed under the title."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{e(title)}</h1>",
        '<p class="inputs">'
        + "<br>".join(f"{e(kind)}: <code>{e(path)}</code>" for kind, path in inputs)
        + f"<br>written by curate {e(__version__)}</p>",
    ]
    if len(sections) > 1:
        parts.append(
            "<nav>" + " · ".join(f'<a href="#{s.anchor}">{e(s.title)}</a>' for s in sections) + "</nav>"
        )
    for section in sections:
        parts.append(f'<section id="{e(section.anchor)}"><h2>{e(section.title)}</h2>')
        if section.text:
            parts.append(f"<p>{e(section.text)}</p>")
        parts.extend(f'<p class="note">{e(note)}</p>' for note in section.notes)
        tables = [_table(table) for table in section.tables]
        figures = [
            f'<figure><img src="{e(figure.file)}" alt="{e(figure.caption)}">'
            f"<figcaption>{e(figure.caption)}</figcaption></figure>"
            for figure in section.figures
        ]
        parts.extend(figures + tables if section.figures_first else tables + figures)
        parts.append("</section>")
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"


def _table(table: Table) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in table.headers)
    body = "".join("<tr>" + "".join(_cell(value) for value in row) + "</tr>" for row in table.rows)
    caption = f"<caption>{e(table.caption)}</caption>" if table.caption else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: object) -> str:
    if value is None:
        return "<td>–</td>"
    if isinstance(value, float | int) and not isinstance(value, bool):
        return f'<td class="num">{html.escape(format_number(value))}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def format_number(value: float | int) -> str:
    """Integers as they are; FLOPs-sized floats in e-notation; the rest with four significant digits."""
    if isinstance(value, int):
        return str(value)
    if value != value:
        return "nan"
    if abs(value) >= 1e6:
        return f"{value:.3e}"
    return f"{value:.4g}"
