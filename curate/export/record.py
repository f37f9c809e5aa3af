"""`export.json`, the resume check: the plan's fingerprint, written when a folder is first claimed and
compared on every later run, so a resume never mixes two exports in one folder."""

from __future__ import annotations

import hashlib
import json

from curate.errors import CurateError
from curate.export.plan import Planned
from curate.fileio import atomic_open, filesystem, join, read_json_object
from curate.select.manifest import manifest_path
from curate.shards import STATS_SUFFIX, folder_files

EXPORT_FILE = "export.json"


def claim_folder(
    out: str, manifest: str, plan: list[Planned], per_shard: int, outputs: int, command: str
) -> None:
    """Write `export.json`, or check that the one there describes this same export (safe resume)."""
    digest = hashlib.sha256()
    for row in plan:  # the order too: the same samples in another order are another export
        digest.update(f"{row.source}\t{row.key}\t{row.batch}\n".encode())
    fingerprint = {"samples": len(plan), "samples_per_shard": per_shard, "shards": outputs}
    fingerprint["plan_sha256"] = digest.hexdigest()
    fs, path = filesystem(out)
    fs.makedirs(path, exist_ok=True)
    record = join(out, EXPORT_FILE)
    record_path = filesystem(record)[1]
    if fs.exists(record_path):
        existing = read_json_object(
            record, "a curate export record", "; export into a new folder, or delete it to start over"
        )
        if {k: existing.get(k) for k in fingerprint} != fingerprint:
            raise CurateError(
                f"{out} holds another export (another manifest or --samples-per-shard); "
                "export into a new folder"
            )
        return
    if folder_files(out, STATS_SUFFIX):
        raise CurateError(f"{out} already holds shards that curate export did not write; use a new folder")
    with atomic_open(record, "w") as handle:
        json.dump(
            {**fingerprint, "manifest": str(manifest_path(manifest).resolve()), "command": command}, handle
        )
