"""`curate download`: run img2dataset on a table of (url, caption) into shards, and retry its failures.

config.py   DownloadConfig, DownloadSummary
urls.py     the user's url table, read and normalised to img2dataset's columns
run.py      img2dataset in a child process, watched for progress; the summary over `_stats.json`
retry.py    `--retry-failed`: download the failed rows again and merge the successes into their shards
"""

from curate.download.config import DownloadConfig, DownloadSummary
from curate.download.retry import merge_retried, retry_failed
from curate.download.run import download, summarise
from curate.download.urls import read_url_table

__all__ = [
    "DownloadConfig",
    "DownloadSummary",
    "download",
    "merge_retried",
    "read_url_table",
    "retry_failed",
    "summarise",
]
