"""`curate download --retry-failed`: img2dataset never retries a failed row, so download OUT's failed rows
again and merge each success into its original shard under its original key.

Each rewritten shard goes through `write_shard_files` (tar, parquet, then `_stats.json`, each atomically),
so a retry killed half-way and run again neither loses nor duplicates a sample.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.download.config import IMG2DATASET_COLUMNS, DownloadConfig, DownloadSummary
from curate.download.run import run_img2dataset, summarise
from curate.download.urls import fetchable_rows
from curate.errors import CurateError, first_line
from curate.fileio import basename, output_path, read_json_object, remove_stale_temporaries
from curate.runtime import Progress
from curate.shards.paths import folder_files, shard_sibling
from curate.shards.reader import ReadStats, iter_members
from curate.shards.schema import METADATA_EXTENSION, STATS_SUFFIX, SUCCESS
from curate.shards.writer import write_shard_files, write_sizes

# Carried through the retry run as extra columns, so each success finds its way home.
RETRY_KEY, RETRY_SHARD = "curate_retry_key", "curate_retry_shard"
NEEDED_COLUMNS = ("key", "url", "caption", "status")


def retry_failed(out: str, config: DownloadConfig, progress: Progress | None = None) -> DownloadSummary:
    """Download the failed rows of `out` again and merge the successes into their shards."""
    folder = output_path(out, "OUT")
    remove_stale_temporaries(folder)  # a killed merge's half-written shards
    tables = folder_files(str(folder), ".parquet")
    if not tables:
        raise CurateError(f"no img2dataset shards (*.parquet) in {out} to retry")
    failed = [rows for rows in map(_failed_rows, tables) if rows.num_rows]
    if not failed:
        return summarise(folder)
    # A row of a download made with --allow-local-urls stays failed when retried without it.
    retry_input, skipped = fetchable_rows(pa.concat_tables(failed, promote_options="default"), config)
    if not retry_input.num_rows:
        summary = summarise(folder)
        summary.skipped = skipped
        return summary
    extra = [c for c in retry_input.column_names if c not in ("url", "caption")]
    scratch = folder / "_retry"
    shutil.rmtree(scratch, ignore_errors=True)  # a killed earlier retry: start that part over
    scratch.mkdir()
    try:
        normalised = str(scratch / "urls.parquet")
        pq.write_table(retry_input, normalised)
        run_img2dataset(normalised, scratch / "shards", config, extra, retry_input.num_rows, progress)
        recovered = merge_retried(scratch / "shards", folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_sizes(str(folder))
    summary = summarise(folder)
    summary.retried, summary.recovered, summary.skipped = retry_input.num_rows, recovered, skipped
    return summary


def _failed_rows(path: str) -> pa.Table:
    """The failed rows of one shard table, as img2dataset input that remembers their key and shard."""
    table = _read_table(path)
    missing = [column for column in NEEDED_COLUMNS if column not in table.column_names]
    if missing:
        raise CurateError(
            f"{path} is not an img2dataset shard table: no {', '.join(missing)} column "
            f"(--retry-failed needs {', '.join(NEEDED_COLUMNS)})"
        )
    rows = table.filter(pc.not_equal(table["status"], SUCCESS))
    shard = basename(path).removesuffix(".parquet")
    if rows.num_rows:
        tar = path.removesuffix(".parquet") + ".tar"
        for needed in (tar, shard_sibling(tar, STATS_SUFFIX)):
            if not Path(needed).is_file():
                raise CurateError(
                    f"{path} has failed rows but no {basename(needed)} beside it: --retry-failed merges "
                    f"into finished shards only (run curate download again to finish {shard} first)"
                )
    extra = [c for c in table.column_names if c not in IMG2DATASET_COLUMNS]
    return (
        rows.select(["url", "caption", *extra])
        .append_column(RETRY_KEY, rows["key"])
        .append_column(RETRY_SHARD, pa.array([shard] * rows.num_rows))
    )


def merge_retried(retried: str | Path, out: str | Path) -> int:
    """Move each success of the retry run in `retried` into its original shard of `out`, under its original
    key; return how many."""
    by_shard: dict[str, list[dict]] = {}
    for path in folder_files(str(retried), ".parquet"):
        for row in _read_table(path).to_pylist():
            if row.get("status") == SUCCESS:
                by_shard.setdefault(row[RETRY_SHARD], []).append(row)
    members: dict[str, dict[str, bytes]] = {}
    for path in folder_files(str(retried), ".tar"):
        stats = ReadStats()
        members.update(iter_members(path, stats))
        _refuse_damage(path, stats)
    return sum(_merge_shard(Path(out), shard, rows, members) for shard, rows in sorted(by_shard.items()))


def _merge_shard(out: Path, shard: str, rows: list[dict], retried: dict[str, dict[str, bytes]]) -> int:
    """Rewrite one shard's tar, parquet and stats with its recovered rows."""
    tar, table_path, stats_path = (
        str(out / f"{shard}{suffix}") for suffix in (".tar", ".parquet", STATS_SUFFIX)
    )
    recovered = {row[RETRY_KEY]: row for row in rows}  # original key -> its row from the retry run

    def samples() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
        stats, present = ReadStats(), set()
        for key, group in iter_members(tar, stats):
            present.add(key)
            yield key, list(group.items())
        _refuse_damage(tar, stats)
        for original, row in recovered.items():
            if original in present:
                continue  # merged by an earlier retry that was killed before it rewrote the parquet
            group = retried.get(row["key"])
            if group is None:
                raise CurateError(
                    f"the retry run lists {row['key']} as a success but its tar does not hold it"
                )
            yield (
                original,
                [
                    (ext, _rekeyed(data, original, tar) if ext == METADATA_EXTENSION else data)
                    for ext, data in group.items()
                ],
            )

    table = _read_table(table_path)
    merged = []
    for row in table.to_pylist():
        retried_row = recovered.get(row["key"])
        if retried_row is not None:
            row = {**row, **{k: v for k, v in retried_row.items() if k in row and k != "key"}}
        merged.append(row)
    write_shard_files(
        str(out), shard, samples(), pa.Table.from_pylist(merged, schema=table.schema), _read_stats(stats_path)
    )
    return len(recovered)


def _rekeyed(data: bytes, key: str, tar: str) -> bytes:
    """A retried sample's .json under its original key, without the retry's bookkeeping columns."""
    try:
        meta = json.loads(data)
    except ValueError as error:
        raise CurateError(
            f"retried sample for {tar} key {key}: its .json is not JSON ({first_line(error)})"
        ) from None
    if not isinstance(meta, dict):
        raise CurateError(f"retried sample for {tar} key {key}: its .json is not an object")
    meta = {k: v for k, v in meta.items() if k not in (RETRY_KEY, RETRY_SHARD)}
    return json.dumps({**meta, "key": key}, indent=4).encode()


def _refuse_damage(tar: str, stats: ReadStats) -> None:
    if stats.bad_shards:
        raise CurateError(f"{tar} is damaged ({stats.bad_shards[0][1]}); --retry-failed cannot merge into it")


def _read_table(path: str) -> pa.Table:
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as error:
        raise CurateError(f"cannot read {path}: {first_line(error)}") from None


def _read_stats(path: str) -> dict:
    """An earlier `_stats.json`, whose other fields (img2dataset's timings) the rewritten one keeps."""
    return read_json_object(path, "an img2dataset stats file")
