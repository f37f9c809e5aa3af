"""`curate export`: copy a manifest's samples into new shards in img2dataset's layout, in training order.

The plan is the manifest in training order (batch ascending, then its row order within a batch) cut into
output shards of K samples: output shard i holds plan rows [i·K, (i+1)·K), so consecutive batches land in
consecutive shards and a loader that reads the shards in order, without shuffling, sees JEST's batches in
JEST's order. Which sample lands where depends on the manifest and K alone, so a re-run skips the output
shards whose `_stats.json` exists and reads only the source shards that the others need.

A key that recurs across passes (`select --steps`) is written once per occurrence. Members of one sample
share a prefix and webdataset groups consecutive members by it, so no two samples may share a name: the
first occurrence keeps its key; the n-th repeat is `{key}_{n}`, or the next free `{key}_{m}` when that is
another manifest key's name (see `exported_names`), so names never collide. Every member (image, .txt, any
other) is copied byte for byte, never decoded, except the `.json`: the source's JSON plus `"batch": t`, and
for a repeat `"key"` (its exported name) and `"source_key"` (the manifest key). Each output shard also gets
its rows of the source `.parquet` (all columns, e.g. `noise` or `sha256`; `key` the exported name) plus
`source_key` and `batch` columns, and a `_stats.json`; `sizes.json` lists them all for open_clip.

Source shards are read once each, in name order, as tar streams (phase 1): the chosen members of one are
held in memory and appended to a spill file per pending output shard, under a local temporary folder
(TMPDIR). An output shard is written from its spill, in plan order (phase 2), as soon as the last source it
needs has been read, and its spill deleted; so peak memory is one source shard's chosen members plus one
output shard's parquet rows (its samples stream from the spill one at a time), and the temporary disk holds
only the shards still waiting for a source, not the whole export.

Config (`config.py`) → plan (`plan.py`: the manifest in training order, the rows still to write) and the
resume check (`record.py`: `export.json`) → units (`sources.py`: one source shard read; `exported.py`: what
export changes in a sample; `spill.py`: phase 1's spill files; `output.py`: phase 2's output shard) →
driver (`export` below). The manifest is local (as select writes it); the source shards and the output
folder may be fsspec URLs. `lists.py` writes the selection as a DataComp subset file or a url list instead:
no shard is read.
"""

from __future__ import annotations

import math
import time

from curate.export.config import (
    MAX_SAMPLES_PER_SHARD,
    MIN_SHARDS,
    ExportConfig,
    ExportSummary,
    default_samples_per_shard,
)
from curate.export.exported import EXPORT_FIELDS
from curate.export.lists import ListsSummary, write_lists
from curate.export.output import write_output
from curate.export.plan import exported_names, pending_work, read_plan, rows_of
from curate.export.record import EXPORT_FILE, claim_folder
from curate.export.sources import locate_sources, read_source, verify
from curate.export.spill import spill_path, spill_source
from curate.fileio import local_path, output_lock, remove_stale_temporaries, spill_folder
from curate.runtime import Progress
from curate.select.manifest import require_found
from curate.shards import shard_done, write_sizes

__all__ = [
    "EXPORT_FIELDS",
    "EXPORT_FILE",
    "MAX_SAMPLES_PER_SHARD",
    "MIN_SHARDS",
    "ExportConfig",
    "ExportSummary",
    "ListsSummary",
    "default_samples_per_shard",
    "export",
    "exported_names",
    "write_lists",
]


def export(manifest: str, out: str, config: ExportConfig, progress: Progress | None = None) -> ExportSummary:
    """Write `out/{00000..}.tar|.parquet|_stats.json` and `out/sizes.json` holding the manifest's samples."""
    with output_lock(out):
        return _export_into(out, manifest, config, progress)


def _export_into(out: str, manifest: str, config: ExportConfig, progress: Progress | None) -> ExportSummary:
    start = time.perf_counter()
    manifest = str(local_path(manifest, "MANIFEST"))
    plan = read_plan(manifest)
    sources = locate_sources(manifest, config, plan)
    per_shard = config.samples_per_shard or default_samples_per_shard(len(plan))
    outputs = math.ceil(len(plan) / per_shard)
    summary = ExportSummary(folder=out, samples_per_shard=per_shard)
    claim_folder(out, manifest, plan, per_shard, outputs, config.command)
    remove_stale_temporaries(out)  # a killed run's half-written shards

    pending = [i for i in range(outputs) if not shard_done(out, i)]
    summary.shards_skipped = outputs - len(pending)
    work = pending_work(plan, pending, per_shard)
    summary.keys_wanted = len(work.digests)

    done = len(plan) - sum(rows_of(i, per_shard, len(plan)) for i in pending)
    with spill_folder("export") as spills:
        for name in sorted(work.wanted):
            source = read_source(sources[name], set(work.wanted[name]), summary)
            summary.source_shards_read += 1
            verify(source, work.digests, summary)
            spill_source(source, work.wanted[name], spills, summary)
            # As soon as too many are missing for the rest to make up for it: nothing more is written.
            found_at_most = summary.keys_wanted - summary.keys_missing
            require_found(found_at_most, summary.keys_wanted, config.allow_missing, "export")
            del source  # one source shard's members in memory at a time
            for i in work.ready_after.get(name, []):
                write_output(out, i, spill_path(spills, i), summary)
                done += rows_of(i, per_shard, len(plan))
                if progress:
                    progress(done, len(plan))
    write_sizes(out)
    summary.seconds = time.perf_counter() - start
    return summary
