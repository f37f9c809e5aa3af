"""A run's checkpoints: save (step_N.pt, then latest.pt as an atomic copy) and --resume.

A checkpoint (the format is `curate.models.checkpoint`) holds the model, AdamW's state, the GradScaler's
(fp16 only; empty otherwise), the step, torch's CPU RNG, the config and the run's inputs by content
(`run_inputs`: what --resume must find again). It holds no scheduler state, which
docs/reference/formats.md explains: the learning rate is a pure function of the step (loop.py), so the step is
all a resumed run needs to continue the schedule (nanoGPT does the same).

Resuming is exact: in memory the batch of a step depends on (seed, step) alone; a stream replays its seeded
order up to the step (stream.py; exact under the same --workers and --shuffle-buffer); online JEST and
--multi-resolution's split re-seed their generators every step. Resume first cuts metrics.jsonl and
batches.parquet back to the checkpoint's step, so the run folder reads as one uninterrupted run.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from curate.errors import CurateError
from curate.fileio import atomic_open
from curate.models import ImageTextModel, load_checkpoint, save_checkpoint
from curate.score.schema import ScoreFolder
from curate.select.manifest import selection_id
from curate.train.config import TrainConfig, trajectory_changes
from curate.train.run import LATEST_FILE, BatchLog, checkpoint_path, truncate_metrics


def run_inputs(manifest: str | None, reference: ScoreFolder | None) -> dict[str, str]:
    """What a run trains on, by content, which every checkpoint records and --resume must find again: the
    selection its manifest holds (`--manifest`; `curate select` run anew under the same name is another
    one) and the reference scores online JEST reads (`--ref`; re-scored in place, they are others)."""
    inputs = {}
    if manifest:
        inputs["--manifest"] = selection_id(manifest)
    if reference is not None:
        inputs["--ref"] = reference.content_id
    return inputs


def save(
    run: Path,
    step: int,
    model: ImageTextModel,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    config: TrainConfig,
    batches: BatchLog,
    seconds: float,
    inputs: dict[str, str],
) -> None:
    """Write batches.parquet, then step_N.pt, then latest.pt: a kill between them leaves a latest.pt
    older than batches.parquet, which resume cuts back to it."""
    batches.write(run)
    path = checkpoint_path(run, step)
    save_checkpoint(
        path,
        model.open_clip_name,
        model.config,
        model.state_dict(),
        step=step,
        optimizer=optimizer.state_dict(),
        scaler=scaler.state_dict(),
        rng=torch.get_rng_state(),
        train_config=config.as_dict(),
        seconds=seconds,
        inputs=inputs,
    )
    with atomic_open(str(run / LATEST_FILE), "wb") as handle, open(path, "rb") as source:
        shutil.copyfileobj(source, handle)


@dataclass
class Resumed:
    step: int  # steps done at the checkpoint
    batches: BatchLog  # the batch rows of those steps
    payload: dict

    @property
    def seconds(self) -> float:
        """The run's seconds at the checkpoint (0 in a checkpoint written before they were recorded)."""
        return float(self.payload.get("seconds", 0.0))

    def restore(self, model: ImageTextModel, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler):
        """Load the weights and the optimizer's, the scaler's and the RNG's state. Call it once the data is
        ready: decoding draws from torch's RNG, as it did in the run before the checkpoint was written."""
        model.load_state_dict(self.payload["state_dict"])
        optimizer.load_state_dict(self.payload["optimizer"])
        if scaler.is_enabled() and self.payload.get("scaler"):  # empty when saved under bf16 or fp32
            scaler.load_state_dict(self.payload["scaler"])
        torch.set_rng_state(self.payload["rng"])


def resume(run: Path, config: TrainConfig, inputs: dict[str, str], write: bool = True) -> Resumed:
    """Open RUN/latest.pt for --resume: refuse it if it is another run, was trained by another number of
    processes or on other inputs (`run_inputs`; a checkpoint from before they were recorded has none), then
    (`write`: rank 0 only) cut metrics.jsonl and batches.parquet back to its step. The weights are loaded
    later, by `Resumed.restore`, on every rank."""
    latest = run / LATEST_FILE
    payload = load_checkpoint(latest)
    if "step" not in payload or "optimizer" not in payload:
        raise CurateError(f"--resume: {latest} is a model checkpoint, not a curate train run's")
    try:
        saved = TrainConfig.from_dict(payload.get("train_config"))
    except CurateError as error:
        raise CurateError(f"--resume: {latest} holds settings this version cannot read ({error})") from None
    if saved.world_size != config.world_size:
        raise CurateError(
            f"--resume under {config.world_size} process(es): {latest} was trained by {saved.world_size}, "
            f"and a step's data depends on it; resume with {saved.world_size} (torchrun --nproc-per-node)"
        )
    changed = trajectory_changes(saved, config)
    if changed:
        raise CurateError(
            f"--resume with settings other than {latest}'s ({', '.join(changed)}): not the same run"
        )
    step = int(payload["step"])
    for option, started in (payload.get("inputs") or {}).items():
        if option in inputs and inputs[option] != started:
            raise CurateError(
                f"--resume: {option} holds other data than {latest} was trained on at step {step} (content "
                f"id {inputs[option]} against {started}): resume with what it started from, or a new run"
            )
    if not write:
        return Resumed(step, BatchLog(), payload)
    truncate_metrics(run, step)
    batches = BatchLog.resumed(run, step)
    batches.write(run)
    return Resumed(step, batches, payload)
