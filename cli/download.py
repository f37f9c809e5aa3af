"""`curate download`."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated

import typer

from curate_cli.console import out, progress_bar

if TYPE_CHECKING:
    from curate.download import DownloadSummary


def download_command(
    urls: Annotated[
        str,
        typer.Argument(
            metavar="URLS",
            help="Table of urls and captions: .parquet, .csv, .tsv or .jsonl (a local path or fsspec URL).",
        ),
    ],
    out_dir: Annotated[
        str, typer.Argument(metavar="OUT", help="Local folder for the shards (img2dataset layout).")
    ],
    url_col: Annotated[str, typer.Option(help="Column holding the image url.")] = "url",
    caption_col: Annotated[str, typer.Option(help="Column holding the caption.")] = "caption",
    image_size: Annotated[int, typer.Option(help="Side the images are resized to.")] = 256,
    resize_mode: Annotated[
        str, typer.Option(help="border, keep_ratio, keep_ratio_largest, center_crop or no (keep as is).")
    ] = "border",
    encode_format: Annotated[str, typer.Option(help="jpg, png or webp.")] = "jpg",
    processes: Annotated[int, typer.Option(help="Download processes.")] = os.cpu_count() or 1,
    threads: Annotated[int, typer.Option(help="Download threads per process.")] = 32,
    samples_per_shard: Annotated[int, typer.Option(help="Rows per output shard.")] = 10_000,
    extra_columns: Annotated[
        str, typer.Option(help="Comma-separated input columns to keep in each sample's .json and parquet.")
    ] = "",
    timeout: Annotated[int, typer.Option(help="Seconds before a request is given up.")] = 10,
    retries: Annotated[int, typer.Option(help="img2dataset's own immediate retries per url.")] = 0,
    allow_local_urls: Annotated[
        bool,
        typer.Option(
            help="Also fetch urls that are not http or https (file://, ftp://, data:), which could copy "
            "this machine's files into the shards: only for url lists you trust."
        ),
    ] = False,
    retry_failed_rows: Annotated[
        bool,
        typer.Option(
            "--retry-failed",
            help="Do not download URLS again: re-download only OUT's failed rows and merge the successes in.",
        ),
    ] = False,
) -> None:
    """Download images with img2dataset into webdataset shards (NNNNN.tar, .parquet, _stats.json).

    Re-running resumes: finished shards are kept. img2dataset's own log goes to OUT/download.log.
    Only http and https urls are fetched: rows with another scheme (file://, ftp://) are left out and
    counted, unless --allow-local-urls.
    img2dataset never retries a failed row; --retry-failed does, keeping each row's key and shard.

    \b
    example: curate download urls.parquet shards/ --caption-col TEXT --image-size 256
             curate download urls.parquet shards/ --retry-failed
    """
    from curate.download import DownloadConfig, download, retry_failed

    config = DownloadConfig(
        url_col=url_col,
        caption_col=caption_col,
        image_size=image_size,
        resize_mode=resize_mode,
        encode_format=encode_format,
        processes=processes,
        threads=threads,
        samples_per_shard=samples_per_shard,
        extra_columns=tuple(c.strip() for c in extra_columns.split(",") if c.strip()),
        timeout=timeout,
        retries=retries,
        allow_local_urls=allow_local_urls,
    )
    with progress_bar("download", unit="shards") as progress:
        if retry_failed_rows:
            summary = retry_failed(out_dir, config, progress)
        else:
            summary = download(urls, out_dir, config, progress)
    out.print(_describe(summary))


def _describe(summary: DownloadSummary) -> str:
    failed = summary.count - summary.successes
    line = f"{summary.successes}/{summary.count} images in {summary.shards} shards at {summary.folder}"
    if summary.retried:
        line += f"; retried {summary.retried} failed rows, recovered {summary.recovered}"
    if failed:
        reasons = "; ".join(f"{n} × {reason}" for reason, n in summary.failures.most_common(5))
        line += f"; {failed} failed ({reasons})"
    if summary.skipped:
        reasons = "; ".join(f"{n} × {reason}" for reason, n in sorted(summary.skipped.items()))
        skipped = sum(summary.skipped.values())
        line += f"; {skipped} rows skipped ({reasons}: only http and https without --allow-local-urls)"
    return line
