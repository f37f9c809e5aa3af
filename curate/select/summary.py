"""The content of `MANIFEST/summary.json` (written and read by `select/manifest.py`): what a selection did.

It records the exact command, the parameters, the models' metadata, the counts, and per super-batch the
mean criterion over the selected batch's b x b pairs next to a random batch of the same size from the same
super-batch: the number that shows joint selection did something. A global filter (clipscore, negclip) has
no super-batch results; it records what it kept instead, and its selected/random scores are null.
Every selection records its partitioning (how many, and each one's files, rows and counts); the counts at
the top are the partitions' summed (the same as before partitions existed, for one), and a global filter
over several partitions records the threshold it found and how far its kept count may be from the exact
top share.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from curate import __version__
from curate.fileio import absolute
from curate.score.schema import ScoreFolder
from curate.select.config import SelectConfig
from curate.select.global_filter import FilterResult
from curate.select.superbatch import SuperBatchResult
from curate.select.window import PassCounts


@dataclass
class SelectSummary:
    counts: dict = field(default_factory=dict)
    super_batches: list[SuperBatchResult] = field(default_factory=list)
    selected: int = 0
    skipped_last: int = 0  # samples of a final super-batch too small to select from
    seconds: float = 0.0
    device: str = ""
    passes: PassCounts = field(default_factory=PassCounts)
    unique_keys: int = 0  # distinct keys among the selected rows
    filter: FilterResult | None = None  # what a global filter kept (None: per-super-batch selection)
    partitions: list[dict] = field(default_factory=list)  # each partition's files, rows and counts
    threshold: dict | None = None  # a global filter over several partitions: its sketch's threshold

    @property
    def batches(self) -> int:
        return self.filter.batches if self.filter else len(self.super_batches)

    @property
    def repeats(self) -> int:
        """Selected rows whose key an earlier batch already holds (only several passes make them)."""
        return self.selected - self.unique_keys

    @property
    def in_super_batches(self) -> int:
        return sum(r.size for r in self.super_batches)

    @property
    def selected_score(self) -> float:
        return (
            float(np.mean([r.selected_score for r in self.super_batches])) if self.super_batches else math.nan
        )

    @property
    def random_score(self) -> float:
        return (
            float(np.mean([r.random_score for r in self.super_batches])) if self.super_batches else math.nan
        )

    @property
    def masked_share(self) -> dict[str, float] | None:
        """--false-negatives mask:T: the mean share of off-diagonal pairs masked, selected and random."""
        masked = [r for r in self.super_batches if r.selected_masked is not None]
        if not masked:
            return None
        return {
            "selected": float(np.mean([r.selected_masked for r in masked])),
            "random": float(np.mean([r.random_masked for r in masked])),
        }

    @property
    def last(self) -> SuperBatchResult | None:
        return self.super_batches[-1] if self.super_batches else None


def summary_json(
    summary: SelectSummary,
    config: SelectConfig,
    scores: str,
    reference: ScoreFolder,
    learner: ScoreFolder | None,
) -> dict:
    """The frame every selection shares (command, parameters, inputs, models, counts), then what its
    method did: per super-batch scores for JEST and its baselines, the kept share for a global filter."""
    learner = learner if summary.filter is None else None
    passes = {
        "selected": summary.selected,
        "passes": summary.passes.passes,
        "left_out_of_passes": summary.passes.left_out,
        "unique_keys": summary.unique_keys,
        "repeated_keys": summary.repeats,
    }
    frame = {
        "command": config.command,
        "curate_version": __version__,
        "parameters": {
            k: v for k, v in asdict(config).items() if k not in ("command", "learner", "shards", "keep")
        },
        "inputs": {
            "scores": absolute(scores),
            "learner": absolute(config.learner) if learner else None,
            "shards": absolute(config.shards) if config.shards else None,
            "keep": absolute(config.keep) if config.keep else None,
        },
        "models": {
            "reference": asdict(reference.metadata),
            "learner": asdict(learner.metadata) if learner else None,
        },
        "device": summary.device,
        "seconds": round(summary.seconds, 3),
    }
    frame["partitioning"] = {
        "partitions": len(summary.partitions),
        "partition_size": config.partition_size,
        "note": "each partition selects from its own score files under its own seed (a repeated key is "
        "found within a partition, not across); partition k of P holds batches k, k + P, k + 2P, ...",
        "each": summary.partitions,
    }
    kept = summary.filter
    if kept is not None:
        if summary.threshold is not None:
            frame["global_threshold"] = summary.threshold
        return {
            **frame,
            "counts": {**summary.counts, "kept": kept.kept, "batches": kept.batches, **passes},
            "filter": asdict(kept),
            "score": (
                f"{kept.score} of each sample; the global top {1.0 - config.ratio:.4g} of the eligible "
                "samples is kept, batches cut from seeded shuffles of it"
            ),
            "selected_score": None,  # a joint score of batches, which a global filter does not compute
            "random_score": None,
            "last_super_batch": None,
            "super_batch_results": [],
        }
    return {
        **frame,
        "counts": {
            **summary.counts,
            "in_super_batches": summary.in_super_batches,
            "skipped_last_super_batch": summary.skipped_last,
            "super_batches": len(summary.super_batches),
            "batches": len(summary.super_batches),
            **passes,
        },
        "last_super_batch": _last(summary, config),
        "score": (
            f"mean of A_ij over the b x b pairs of a batch, criterion {config.criterion}; "
            "random_score is a uniform batch of the same size from the same super-batch"
        ),
        "selected_score": summary.selected_score,
        "random_score": summary.random_score,
        **({"masked_share": summary.masked_share} if summary.masked_share else {}),
        "super_batch_results": [_without_nulls(asdict(r)) for r in summary.super_batches],
    }


def _without_nulls(result: dict) -> dict:
    """A super-batch's line, without the masked shares of a selection that masked nothing."""
    return {k: v for k, v in result.items() if v is not None}


def _last(summary: SelectSummary, config: SelectConfig) -> dict | None:
    """What happened to the final super-batch, which is short unless B divides the eligible count."""
    if summary.skipped_last:
        return {
            "size": summary.skipped_last,
            "selected": 0,
            "note": "too small to keep any sample at this ratio",
        }
    last = summary.last
    if last is None:
        return None
    return {"size": last.size, "selected": last.selected, "short": last.size < config.super_batch}


def describe_counts(counts: dict) -> str:
    parts = [f"{counts['seen']} rows"]
    if counts["not_ok"]:
        parts.append(f"{sum(counts['not_ok'].values())} not ok")
    for name in (
        "nonfinite",
        "where_filtered",
        "duplicate_keys",
        "not_kept",
        "learner_missing",
        "learner_not_ok",
    ):
        if counts.get(name):
            parts.append(f"{counts[name]} {name.replace('_', ' ')}")
    return ", ".join(parts)


def merged_counts(counts: list[dict]) -> dict:
    """The partitions' counts summed (`not_ok` by status), in the first's key order."""
    merged: dict = {}
    for part in counts:
        for name, value in part.items():
            if isinstance(value, dict):
                into = merged.setdefault(name, {})
                for status, n in value.items():
                    into[status] = into.get(status, 0) + n
            else:
                merged[name] = merged.get(name, 0) + value
    if isinstance(merged.get("not_ok"), dict):
        merged["not_ok"] = dict(sorted(merged["not_ok"].items()))
    return merged
