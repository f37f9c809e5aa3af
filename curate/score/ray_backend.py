"""`curate score --backend ray`: the local backend's per-shard scoring, one model replica per Ray actor.

Each actor loads the model once (through `load_model`, like the local backend) and scores whole shards,
one call per shard, with `score_batches`: the same bytes as a local run. Ray's ActorPool hands the next
shard to whichever actor finishes first. An actor whose process dies mid-shard is restarted and the shard
retried; the score file is written atomically, so a retry can never leave a half or doubled file.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from curate.backends.ray_cluster import (
    exit_once_for_tests,
    ray_session,
    worker_errors,
    worker_options,
    worker_slots,
)
from curate.fileio import absolute
from curate.models import ImageTextModel, load_model
from curate.runtime import Progress, resolve_device, resolve_precision
from curate.score.config import ScoreConfig, ScoreSummary
from curate.score.schema import check_same_model
from curate.score.unit import encoding_resolution, score_batches, score_metadata
from curate.shards.batches import ShardBatches
from curate.shards.paths import count_samples


class ShardScorer:
    """A Ray actor (wrapped with `ray.remote` at run time, so this module imports without Ray)."""

    def __init__(self, config: ScoreConfig, out: Path, threads: int) -> None:
        torch.set_num_threads(threads)  # the node's cores are shared among its actors: no oversubscription
        self.config, self.out = config, out
        self._model: ImageTextModel | None = None
        self.device, self.precision = torch.device("cpu"), "fp32"  # set with the model, on the worker

    def start(self) -> tuple[str, dict[str, str]]:
        """Load the model now, so a bad --model fails once, as a user error, before any shard is handed out.
        Returns the device and the model's score metadata, which the driver checks against the folder.

        Not in __init__: Ray reports an exception there as a dead actor with a traceback, not as the error.
        """
        model = self._load()
        resolution = encoding_resolution(model, self.config.resolution)  # a bad one fails here, once
        return f"{self.device.type} {self.precision}", score_metadata(model, resolution)

    def score(self, path: str) -> ScoreSummary:
        summary = ScoreSummary()
        started = time.perf_counter()  # the first shard's cost includes loading the model
        model = self._load()
        resolution = encoding_resolution(model, self.config.resolution)
        preprocess = model.preprocess_at(resolution)  # as the local backend's workers: the same pixels
        batches = ShardBatches([path], preprocess, model.tokenizer, self.config.batch_size, digests=True)
        # Decoded in this process: parallelism comes from more actors, not from processes inside one.
        # The progress hook is the test-only exit (a no-op unless its variable is set): after a batch, so
        # the worker dies mid-shard.
        score_batches(
            batches,
            model,
            self.device,
            self.precision,
            self.out,
            summary,
            lambda _: exit_once_for_tests(),
            started=started,
            resolution=resolution,
        )
        return summary

    def _load(self) -> ImageTextModel:
        # Lazily, so a restarted actor (a fresh process, __init__ re-run) reloads it by itself.
        if self._model is None:
            config = self.config
            self.device = resolve_device(config.device)  # the worker's own GPU, if Ray gave it one
            self.precision = resolve_precision(config.precision, self.device)
            self._model = load_model(
                config.model, config.pretrained, self.device, config.allow_random_init, config.seed
            )
        return self._model


def score_on_ray(
    pending: list[str],
    out: Path,
    config: ScoreConfig,
    summary: ScoreSummary,
    progress: Progress | None = None,
) -> None:
    """Score `pending` shards on the Ray cluster of `config.ray`, counting into `summary`."""
    start = time.perf_counter()
    # Workers run in other folders, on other machines: they get absolute paths (which, like the shards,
    # must name storage every node sees).
    pending, out = [absolute(p) for p in pending], out.absolute()
    with ray_session(config.ray) as ray:
        from ray.util import ActorPool

        slots = worker_slots(ray, config.ray)[: len(pending)]
        remote = ray.remote(ShardScorer)
        actors = [
            remote.options(**worker_options(slot, config.ray)).remote(config, out, slot.threads)
            for slot in slots
        ]
        try:
            with worker_errors(ray, "scoring"):
                started = ray.get([actor.start.remote() for actor in actors])
                devices = sorted({device for device, _ in started})
                summary.device = f"{len(actors)} Ray workers, {', '.join(devices)}"
                if not config.overwrite:
                    check_same_model(out, config.model, config.pretrained, started[0][1])
                out.mkdir(parents=True, exist_ok=True)  # only now: a run that cannot start leaves nothing
                scoring = time.perf_counter()
                summary.startup_seconds = scoring - start
                total, seen = count_samples(pending), 0
                pool = ActorPool(actors)
                for shard in pool.map_unordered(lambda actor, path: actor.score.remote(path), pending):
                    summary.add(shard)
                    seen += shard.samples
                    if progress:
                        progress(seen, total)
                summary.seconds = time.perf_counter() - scoring
        finally:
            for actor in actors:
                ray.kill(actor)  # frees their resources now, even when connected to a long-lived cluster
