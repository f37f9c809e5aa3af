"""`curate select`: score folders → seeded super-batches → JEST (or a baseline) → manifest + summary.

The manifest's schema and readers load eagerly; the selection loop (torch, DuckDB) loads on first use, so
`curate export` and `curate query`, which only read manifests, start without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from curate.select.manifest import (
    MANIFEST_FILE,
    MANIFEST_SCHEMA,
    SUMMARY_FILE,
    manifest_metadata,
    manifest_path,
    read_manifest,
    read_summary,
)

if TYPE_CHECKING:
    from curate.select.selecting import SelectConfig, SelectSummary, select, super_batch_for
    from curate.select.superbatches import (
        SampleIndex,
        SuperBatch,
        build_index,
        iter_super_batches,
    )

_LAZY = {
    "curate.select.selecting": ("SelectConfig", "SelectSummary", "select", "super_batch_for"),
    "curate.select.superbatches": (
        "SampleIndex",
        "SuperBatch",
        "build_index",
        "iter_super_batches",
    ),
}
_MODULE_OF = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(_MODULE_OF[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MANIFEST_FILE",
    "MANIFEST_SCHEMA",
    "SUMMARY_FILE",
    "SampleIndex",
    "SelectConfig",
    "SelectSummary",
    "SuperBatch",
    "build_index",
    "iter_super_batches",
    "manifest_metadata",
    "manifest_path",
    "read_manifest",
    "read_summary",
    "select",
    "super_batch_for",
]
