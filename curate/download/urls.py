"""The user's url table: parquet, csv, tsv or jsonl, local or any fsspec URL, renamed to img2dataset's
`url` and `caption` columns (img2dataset itself then reads a local copy of it)."""

from __future__ import annotations

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
