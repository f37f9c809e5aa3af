"""`curate dedup`: semantic near-duplicate removal on a score folder's reference image embeddings.

Config (`config.py`) → units (`unit.py`: one score file assigned to clusters, one bucket grouped) → driver
(`run.py`: sample, assign, group, write). The math is `grouping.py`, the spill `spill.py`, the output
artefact `keep.py`.
"""

from curate.dedup.config import DedupConfig
from curate.dedup.keep import KEEP_FILE, KEEP_SCHEMA, keep_file, keep_metadata, read_keep_keys
from curate.dedup.run import DedupSummary, dedup

__all__ = [
    "KEEP_FILE",
    "KEEP_SCHEMA",
    "DedupConfig",
    "DedupSummary",
    "dedup",
    "keep_file",
    "keep_metadata",
    "read_keep_keys",
]
