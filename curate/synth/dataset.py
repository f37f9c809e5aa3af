"""The driver of `curate synth`: plan the web, curated and eval sets, then write them to disk shard by shard
(`unit.py`), resumably."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict

from curate.errors import CurateError
from curate.evaluate.evalset import write_eval_set
from curate.fileio import atomic_open, filesystem, join, output_lock, output_path, remove_stale_temporaries
from curate.shards import shard_done, write_sizes
from curate.synth.config import SynthConfig, SynthSummary
from curate.synth.plan import plan
from curate.synth.scenes import render
from curate.synth.unit import write_planned_shard
from curate.synth.vocabulary import ZEROSHOT_TEMPLATES, class_names
from curate.validate import check


def synthesize(
    config: SynthConfig, out: str, workers: int = 2, progress: Callable[[int, int], None] | None = None
) -> SynthSummary:
    """Write `out/web`, `out/curated` and `out/eval`; shards already complete are kept (resume).

    `progress(done, total)` is called as samples are written.
    """
    check(workers >= 0, "--workers", "0 or more", workers)  # 0 or 1: render in this process
    out = str(output_path(out, "OUT"))
    with output_lock(out, "OUT"):
        return _synthesize_into(config, out, workers, progress)


def _synthesize_into(
    config: SynthConfig, out: str, workers: int, progress: Callable[[int, int], None] | None
) -> SynthSummary:
    _claim(out, config)
    remove_stale_temporaries(out, *(join(out, split) for split in ("web", "curated", "eval")))
    planned = plan(
        n=config.n,
        seed=config.seed,
        noise=config.noise,
        curated=int(round(config.curated_fraction * config.n)),
        eval_per_class=config.eval_per_class,
        zipf=config.zipf,
        concepts=config.concepts,
    )
    total = len(planned.web) + len(planned.curated) + len(planned.eval)
    done, written, skipped, pending = 0, 0, 0, []
    for split, samples in (("web", planned.web), ("curated", planned.curated)):
        folder = join(out, split)
        fs, path = filesystem(folder)
        fs.makedirs(path, exist_ok=True)
        for index, start in enumerate(range(0, len(samples), config.samples_per_shard)):
            shard = samples[start : start + config.samples_per_shard]
            if shard_done(folder, index):
                skipped += 1
                done += len(shard)
            else:
                pending.append((folder, index, shard, config))
    if progress:
        progress(done, total)
    parallel = workers > 1 and len(pending) > 1
    with ProcessPoolExecutor(max_workers=workers) if parallel else contextlib.nullcontext() as pool:
        for count in (pool.map if parallel else map)(write_planned_shard, pending):
            written += 1
            done += count
            if progress:
                progress(done, total)
    for split in ("web", "curated"):
        write_sizes(join(out, split))
    eval_folder = join(out, "eval")
    # The eval set names the classes present only (all 64 by default), its labels numbered in that list.
    names, position = class_names(), {label: i for i, label in enumerate(planned.classes)}
    write_eval_set(
        eval_folder,
        images=[render(s.scene, config.image_size, "png") for s in planned.eval],
        labels=[position[s.label] for s in planned.eval],
        captions=[s.caption for s in planned.eval],
        classnames=[names[label] for label in planned.classes],
        templates=ZEROSHOT_TEMPLATES,
    )
    if progress:
        progress(total, total)
    return SynthSummary(
        folder=out,
        web=len(planned.web),
        curated=len(planned.curated),
        eval=len(planned.eval),
        shards_written=written,
        shards_skipped=skipped,
        noise=dict(Counter(s.noise for s in planned.web)),
        classes=len(planned.classes),
    )


def _claim(out: str, config: SynthConfig) -> None:
    """Record the settings in `out/synth.json`; refuse to mix two different sets in one folder."""
    fs, path = filesystem(out)
    fs.makedirs(path, exist_ok=True)
    recorded = asdict(config)
    if config.concepts is None:
        del recorded["concepts"]  # so a folder made before --concepts existed is still this one
    settings = json.dumps(recorded, indent=2, sort_keys=True)
    marker = join(out, "synth.json")
    if fs.exists(filesystem(marker)[1]):
        with fs.open(filesystem(marker)[1], "r") as handle:
            if handle.read() != settings:
                raise CurateError(
                    f"{out} holds a synthetic set made with other settings (see {marker}); "
                    "choose another folder or delete it"
                )
        return
    with atomic_open(marker, "w") as handle:
        handle.write(settings)
