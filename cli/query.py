"""`curate query`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from curate_cli.console import err, out

TABLE_ROWS = 100  # rows shown by --format table; the other formats write every row
CELL_CHARS = 60


def query_command(
    sql: Annotated[str, typer.Argument(metavar="SQL", help="A DuckDB query over the views below.")],
    scores: Annotated[
        str | None, typer.Option(metavar="DIR", help="Score folder, queried as the view `scores`.")
    ] = None,
    manifest: Annotated[
        str | None, typer.Option(metavar="DIR", help="Manifest folder, queried as the view `manifest`.")
    ] = None,
    keep: Annotated[
        str | None,
        typer.Option(metavar="DIR", help="Keep folder of curate dedup, queried as the view `keep`."),
    ] = None,
    shards: Annotated[
        str | None,
        typer.Option(
            metavar="DIR",
            help="Shard folder (path or fsspec URL); its img2dataset .parquet tables are the view `shards`.",
        ),
    ] = None,
    run: Annotated[
        list[str] | None,
        typer.Option(
            "--run",
            metavar="RUN",
            help="Run folder of curate train; its batches.parquet joins the view `batches`. Repeatable.",
            show_default=False,
        ),
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="table, csv, json (one object per line) or parquet (needs -o).")
    ] = "table",
    output: Annotated[
        str | None,
        typer.Option(
            "--output", "-o", metavar="FILE", help="Write here (a path or fsspec URL), not to stdout."
        ),
    ] = None,
) -> None:
    """Ask SQL questions of scores, manifests, shards and runs (DuckDB; nothing is loaded up front).

    Views: `scores` (key, shard, caption, image_emb, text_emb as FLOAT[] arrays, similarity, status),
    `manifest` (key, shard, batch, super_batch, chunk, score), `keep` (key, shard, similarity, cluster,
    group_size: what curate dedup kept), `shards` (img2dataset's per-sample tables:
    key, caption, url, status, ..., and extra columns such as noise or sha256) and `batches` (run, step,
    key: what each step of each --run trained on; run is the run folder's name). Only the views whose
    folder is given exist. --format table shows the first 100 rows; csv, json and parquet write them all.
    SQL runs with DuckDB's full access, as your own console: it can read and write any file you can
    (read_csv('...'), COPY ... TO), so run only queries you trust; `select --where` reads score files only.

    \b
    example: curate query "SELECT s.noise, count(*) FROM manifest JOIN shards s USING (key) GROUP BY 1" \\
               --manifest manifest/ --shards shards/
             curate query "SELECT round(similarity, 1) AS bin, count(*) FROM scores GROUP BY 1 ORDER BY 1" \\
               --scores scores/
             curate query "SELECT caption, score FROM manifest JOIN scores USING (key) \\
               ORDER BY score DESC LIMIT 10" --manifest manifest/ --scores scores/ --format csv
             curate query "SELECT run, noise, count(*) AS n, round(n / sum(n) OVER (PARTITION BY run), 3) \\
               AS share FROM batches JOIN shards USING (key) GROUP BY run, noise ORDER BY run, n DESC" \\
               --run runs/jest --run runs/uniform --shards shards/
    """
    from curate.errors import CurateError
    from curate.query import FORMATS, QuerySources, run_query, write_result

    if fmt not in FORMATS:
        raise CurateError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "parquet" and output is None:
        raise CurateError("--format parquet needs -o FILE")
    sources = QuerySources(scores=scores, manifest=manifest, keep=keep, shards=shards, runs=tuple(run or ()))
    with run_query(sql, sources) as reader:
        if fmt == "table":
            _print_table(reader, output)
        elif output is None:
            write_result(reader, fmt, sys.stdout)
        else:
            rows = write_result(reader, fmt, path=output)
            err.print(f"wrote {rows} rows to {output}")


def _print_table(reader, output: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    from curate.query import jsonable, shortest_floats

    table = Table(*reader.schema.names, show_edge=False, header_style="bold")
    shown = total = 0
    for batch in reader:
        total += batch.num_rows
        for row in shortest_floats(batch.slice(0, max(0, TABLE_ROWS - shown))).to_pylist():
            table.add_row(*(_cell(jsonable(v)) for v in row.values()))
            shown += 1
    if output is None:
        out.print(table)
    else:
        from curate.query import output_file

        with output_file(output, "w") as handle:
            Console(file=handle, width=200).print(table)
    more = f" (first {shown} shown; --format csv or json writes all)" if total > shown else ""
    err.print(f"{total} rows{more}")


def _cell(value) -> str:
    import json

    text = "" if value is None else json.dumps(value) if isinstance(value, list | dict) else str(value)
    return text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 1] + "…"
