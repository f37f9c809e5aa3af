"""The user's url table: parquet, csv, tsv or jsonl, local or any fsspec URL, renamed to img2dataset's
`url` and `caption` columns (img2dataset itself then reads a local copy of it).

img2dataset fetches with urllib, which opens file://, ftp:// and data: urls as readily as http ones, so a
url list from elsewhere could copy this machine's files into the shards. Only http and https rows are
handed to it unless --allow-local-urls; the others are left out before the download (img2dataset numbers
the rows it is given, so the keys count only those) and counted as `unsupported_scheme`.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from curate.download.config import DownloadConfig
from curate.errors import CurateError, first_line
from curate.fileio import basename, filesystem

INPUT_FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


def read_url_table(path: str, config: DownloadConfig) -> pa.Table:
    """The url table at `path` with only the url, caption and extra columns, the first two renamed."""
    fs, fs_path = filesystem(path)
    if not fs.isfile(fs_path):
        raise CurateError(f"no such file: {path}")
    name = basename(fs_path)
    suffix = name[name.rfind(".") :].lower() if "." in name else ""
    if suffix not in INPUT_FORMATS:
        raise CurateError(f"{path}: expected a .parquet, .csv, .tsv or .jsonl file")
    try:
        with fs.open(fs_path, "rb") as handle:
            if INPUT_FORMATS[suffix] == "parquet":
                table = pq.read_table(handle)
            elif INPUT_FORMATS[suffix] == "jsonl":
                table = pa_json.read_json(handle)
            else:
                delimiter = "\t" if suffix == ".tsv" else ","
                table = pa_csv.read_csv(handle, parse_options=pa_csv.ParseOptions(delimiter=delimiter))
    except (pa.ArrowInvalid, OSError) as error:
        raise CurateError(f"cannot read {path}: {first_line(error)}") from None
    wanted = {config.url_col: "url", config.caption_col: "caption"}
    for column in [*wanted, *config.extra_columns]:
        if column not in table.column_names:
            raise CurateError(f"{path} has no column {column!r} (it has: {', '.join(table.column_names)})")
    table = table.select([*wanted, *config.extra_columns]).rename_columns(
        ["url", "caption", *config.extra_columns]
    )
    return table.set_column(1, "caption", pc.cast(table["caption"], pa.string()))


UNSUPPORTED_SCHEME = "unsupported_scheme"
FETCHED = "^https?://"  # what img2dataset may fetch without --allow-local-urls (case-insensitive)


def fetchable_rows(table: pa.Table, config: DownloadConfig) -> tuple[pa.Table, Counter]:
    """The rows of a normalised url table that img2dataset may fetch, and the others counted by reason.

    A url that does not start with http:// or https:// (file:///etc/passwd, ftp://..., " file://...",
    which urllib strips) is left out unless `config.allow_local_urls`. A missing url stays: img2dataset
    reports it as the failure it is. http redirects cannot lead to file:// (urllib refuses them).
    """
    if config.allow_local_urls:
        return table, Counter()
    try:
        urls = pc.cast(table["url"], pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise CurateError(f"the url column holds no text: {first_line(error)}") from None
    keep = pc.fill_null(pc.match_substring_regex(urls, FETCHED, ignore_case=True), True)
    kept = table.filter(keep)
    dropped = table.num_rows - kept.num_rows
    return kept, Counter({UNSUPPORTED_SCHEME: dropped} if dropped else {})
