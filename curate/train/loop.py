"""`curate train`: the whole SigLIP training loop, readable in one sitting.

Sections: setup → resume → data → steps (online JEST, loss, update, log) → eval → checkpoint. The run
folder's files are defined in run.py, checkpoints and resume in checkpoint.py, the data in data.py and
online JEST in online.py; one update (`train_step`, with Flexi-JEST's multi-resolution split) is a helper
so that bench/online_jest_step.py times the loop's own step.

Many processes (torchrun, srun): one `Group` built in setup is handed to the data, online JEST and the
run-folder writes; the model's one forward is wrapped by DDP and the SigLIP loss covers the global batch
(open_clip's, with its rank and world size). Everything else reads the same with one process.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from open_clip.loss import SigLipLoss
from torch.nn.parallel import DistributedDataParallel

from curate.distributed import Group, Ranks, lost_contact
from curate.errors import CurateError
from curate.fileio import output_lock, output_path, remove_stale_temporaries
from curate.models import ImageTextModel, load_model
from curate.runtime import StatusProgress, autocast, resolve_device, resolve_precision
from curate.seeds import split_seed
from curate.shards.paths import expand_shards
from curate.train.batch import Batch
from curate.train.checkpoint import resume, run_inputs, save
from curate.train.config import OptimConfig, TrainConfig
from curate.train.data import DataReport, TrainData, load_plan, make_data
from curate.train.online import OnlineJest, Window
from curate.train.reference import Reference
from curate.train.run import (
    CHECKPOINTS_DIR,
    LATEST_FILE,
    BatchLog,
    EvalRecord,
    LogRecord,
    MetricsWriter,
    truncate_metrics,
    write_config,
)


@dataclass
class TrainSummary:
    run: str
    steps: int
    start_step: int
    samples: int  # trained on, this session
    seconds: float
    final_loss: float
    data_samples: int | None  # in the cache; None when streaming
    data_mode: str
    # --order batches: manifest samples that could not be decoded (distinct keys in memory; rows trained
    # without, when streaming) and how many batches the manifest holds
    missing_from_manifest: int = 0
    # samples left out of a manifest's batch so that it splits evenly over the processes
    trimmed: int = 0
    manifest_batches: int | None = None
    # with a manifest: how many of its distinct keys the data holds, of how many (checked against
    # MIN_FOUND unless --allow-missing)
    manifest_keys_found: int | None = None
    manifest_keys: int | None = None
    evals: list[EvalRecord] = field(default_factory=list)
    # what decoding met (not counted by the uniform stream's workers, which log it): samples skipped by
    # reason (online JEST: no_reference_score, a sample without an ok, finite reference row), and shards
    # that could not be read whole, with why
    skipped: dict[str, int] = field(default_factory=dict)
    damaged: dict[str, str] = field(default_factory=dict)
    world_size: int = 1  # processes that trained together
    rank: int = 0  # this process's: rank 0 reports for the job

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0


def train(
    config: TrainConfig, progress: StatusProgress | None = None, warn: Callable[[str], None] | None = None
) -> TrainSummary:
    """Train as one process, or as one rank of a job started by torchrun or srun (their environment says
    which): the ranks share one global batch, and only rank 0 writes the run folder and reports progress."""
    ranks = Ranks.from_environment()
    config = replace(config, world_size=ranks.world_size)
    if config.batch_size is not None:  # before joining the others: every rank fails at once, alone
        ranks.share(config.batch_size, "--batch-size")
    device = resolve_device(ranks.device(config.device))
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's point-to-point exchanges find their GPU here
    if not ranks.main:
        progress = warn = None
    # Only rank 0 writes the run folder, so only it holds the folder's lock.
    lock = output_lock(output_path(config.out)) if ranks.main else contextlib.nullcontext()
    with Group(ranks, device, config.collective_timeout) as group, lost_contact(ranks), lock:
        return _train(config, group, device, progress, warn)


def _train(
    config: TrainConfig,
    group: Group,
    device: torch.device,
    progress: StatusProgress | None,
    warn: Callable[[str], None] | None,
) -> TrainSummary:
    # ---------------------------------------------------------------- setup
    clock = time.perf_counter()  # the run's seconds count from here: loading and decoding are paid too
    ranks = group.ranks
    run = output_path(config.out)
    plan = load_plan(config.data.manifest, config.seed) if config.trains_batches else None
    if plan is not None:
        config = config.with_batch_size(plan.batch_size)  # before the resume check: it is a trajectory
        if config.steps > len(plan) and warn:
            warn(
                f"the manifest holds {len(plan)} batches for {config.steps} steps: past step {len(plan)} "
                "they start over in a seeded order (the epoch is in metrics.jsonl); "
                f"curate select --steps {config.steps} makes one batch per step"
            )
    ranks.share(config.batch_size, "--batch-size")  # b is global: each of W ranks trains b/W
    latest = run / LATEST_FILE
    if latest.exists() and not config.resume:
        raise CurateError(
            f"{run} already holds a run: pass --resume to continue it, or choose another folder"
        )
    if config.resume and not latest.exists():
        raise CurateError(f"--resume: no {latest} to continue from")
    precision = resolve_precision(config.precision, device)
    torch.manual_seed(config.seed)
    paths = expand_shards(list(config.data.paths))
    model = load_model(config.model, config.pretrained, device, allow_random_init=True, seed=config.seed)
    _check_resolutions(model, config)  # a non-ViT or a size it cannot take: one line, before any decoding
    optimizer = _optimizer(model, config.optim)
    # fp16 autocast needs its loss scaled up, or small gradients underflow to zero (bf16 has fp32's range,
    # so it needs none). Disabled, the scaler passes everything through unchanged.
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    if ranks.main:
        (run / CHECKPOINTS_DIR).mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run, run / CHECKPOINTS_DIR)  # what a killed run was writing

    # ---------------------------------------------------------------- resume
    # Refuses another run before any decoding; only rank 0 cuts the log back to the checkpoint.
    reference = Reference.open(config.online.ref) if config.online else None  # its metadata only
    inputs = run_inputs(config.data.manifest, reference and reference.scores)
    resumed = resume(run, config, inputs, write=ranks.main) if config.resume else None
    start_step = resumed.step if resumed else 0
    saved_step = start_step if resumed else None  # the last checkpoint written, for a diverged run's error
    batches = resumed.batches if resumed and ranks.main else BatchLog()
    if not resumed and ranks.main:
        write_config(run, config, model.config)
        # A folder without a checkpoint holds at most the log of a run killed before its first one: start
        # that log over, so a rerun reads as one run.
        truncate_metrics(run, 0)

    # ---------------------------------------------------------------- data
    # Its metadata only: each sample brings its own embeddings from the worker that decodes it.
    decoding = (lambda done, total: progress(done, total, "decoding")) if progress else None
    data = make_data(config, paths, model, reference, start_step, group, decoding, plan)
    evaluator = _evaluator(config, model, device, precision) if ranks.main else None  # at the model's size
    step_flops = flops_per_step(model, config)

    # ---------------------------------------------------------------- steps
    if resumed:  # now, not earlier: setup draws from torch's RNG, as it did before the checkpoint was written
        resumed.restore(model, optimizer, scaler)
    forward: torch.nn.Module = model.training_forward()
    if ranks.world_size > 1:  # gradients averaged over the ranks in backward, as DDP does
        forward = DistributedDataParallel(forward, device_ids=[device] if device.type == "cuda" else None)
    # Every cross-rank pair is a negative: open_clip's SigLIP loss exchanges the texts between the ranks.
    loss_fn = SigLipLoss(rank=ranks.rank, world_size=ranks.world_size)
    online = None
    if reference is not None:
        meta = reference.metadata
        online = OnlineJest(config.online, meta.logit_scale, meta.logit_bias, config.seed, group)
    window = Window()
    losses, samples, last_loss = [], 0, float("nan")
    evals: list[EvalRecord] = []
    eval_seconds = 0.0  # evaluation is a measurement, not training: left out of the run's seconds
    earlier_seconds = resumed.seconds if resumed else 0.0

    def seconds() -> float:
        return earlier_seconds + time.perf_counter() - clock - eval_seconds

    started = time.perf_counter()
    with MetricsWriter(run) if ranks.main else contextlib.nullcontext() as metrics:
        for step in range(start_step, config.steps):
            for group_settings in optimizer.param_groups:
                group_settings["lr"] = _learning_rate(step, config.optim, config.steps)
            batch = data.batch(step)
            if not data.even:
                batch = _evened(batch, group, data)
            batch = batch.to(device)  # the one copy to the device
            if online is not None:
                window.start("score")
                chosen = online(model, batch, step, precision, window)
                window.add(chosen)
                batches.add(step, chosen.keys, chosen.rows)
                images, tokens = chosen.images, chosen.tokens
            else:
                batches.add(step, batch.keys)
                images, tokens = batch.images, batch.tokens
            window.start("train")
            loss = train_step(forward, optimizer, scaler, loss_fn, images, tokens, config, step, precision)
            window.stop()
            losses.append(loss)
            samples += len(tokens) * ranks.world_size
            done = step + 1

            saving = (config.save_every and done % config.save_every == 0) or done == config.steps
            # A log line at every checkpoint too: a score file of a checkpoint finds its cost there.
            if done % config.log_every == 0 or saving:
                window_losses = group.mean(torch.stack(losses))  # the global batch's loss
                last_loss = float(window_losses.mean())  # the one host sync of a log window
                # A NaN or infinite loss makes the mean so; then (only then) find its step. Checked here,
                # not every step, so that the device never waits for the host.
                if not math.isfinite(last_loss):
                    first = done - len(losses) + 1 + int((~window_losses.isfinite()).nonzero()[0])
                    raise _diverged(run, f"the loss is not finite at step {first}", saved_step)
                batches.resolve()  # online JEST's chosen rows come over at the same sync
                if online is not None:
                    online.check_agreement()
                record: LogRecord = {
                    "step": done,
                    "loss": last_loss,
                    "lr": optimizer.param_groups[0]["lr"],
                    "samples_per_s": samples / (time.perf_counter() - started),
                    "logit_scale": model.logit_scale,
                    "logit_bias": model.logit_bias,
                    "flops": step_flops * done,
                    "seconds": seconds(),
                    **window.report(group),
                }
                if plan is not None:
                    record["epoch"] = plan.locate(step)[1]  # of the manifest's batches
                if metrics is not None:
                    metrics.write(record)
                losses = []
                if progress:
                    progress(
                        done, config.steps, f"loss {last_loss:.4f} · {record['samples_per_s']:.0f} samples/s"
                    )

            # -------------------------------------------------------- eval
            if evaluator and ((config.eval_every and done % config.eval_every == 0) or done == config.steps):
                eval_started = time.perf_counter()
                result: EvalRecord = {"step": done, "eval": evaluator()}
                eval_seconds += time.perf_counter() - eval_started
                evals.append(result)
                metrics.write(result)

            # -------------------------------------------------------- checkpoint
            if saving:
                # The loss was finite up to here, but the last update may not have been (a non-finite
                # gradient under fp32 or bf16): one reduction per save, never a checkpoint of NaNs.
                if not _finite(model, optimizer):
                    raise _diverged(run, f"the weights are not finite after step {done}", saved_step)
                batches.merge(group.gather_objects(batches.pop_new()), keep=ranks.main)
                if ranks.main:
                    save(run, done, model, optimizer, scaler, config, batches, seconds(), inputs)
                saved_step = done
    report = DataReport.merge(group.gather_objects(data.report))
    return TrainSummary(
        run=str(run),
        steps=config.steps,
        start_step=start_step,
        samples=samples,
        seconds=time.perf_counter() - started,
        final_loss=last_loss,
        data_samples=report.samples,
        data_mode=report.mode,
        missing_from_manifest=report.missing,
        trimmed=report.trimmed,
        manifest_batches=report.manifest_batches,
        manifest_keys_found=report.found[0] if report.found else None,
        manifest_keys=report.found[1] if report.found else None,
        evals=evals,
        skipped=dict(sorted(report.skipped.items())),
        damaged=report.damaged,
        world_size=ranks.world_size,
        rank=ranks.rank,
    )


def _evened(batch: Batch, group: Group, data: TrainData) -> Batch:
    """The ranks' parts of a step cut to the smallest of them (a planned stream's parts lose their
    undecodable samples independently), so that every rank trains as many pairs: SigLIP's exchange of
    texts between ranks needs equal parts. A host collective, no GPU sync."""
    if group.ranks.world_size == 1:
        return batch
    smallest = min(group.gather_objects(len(batch.keys)))
    if not smallest:
        raise CurateError("a batch of the manifest has no sample that could be decoded on some process")
    data.report.trimmed += len(batch.keys) - smallest
    return batch.head(smallest)


# -------------------------------------------------------------------- helpers


def train_step(
    forward: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    loss_fn: SigLipLoss,
    images: torch.Tensor,
    tokens: torch.Tensor,
    config: TrainConfig,
    step: int,
    precision: str,
) -> torch.Tensor:
    """One AdamW update on the pairs (images, tokens), already on the device, through `forward` (the
    model's `training_forward()`, or DDP around it). Returns this rank's loss, still on the device: reading
    it here would sync every step.

    With --multi-resolution R, a random half of the batch is encoded at R and the rest at the model's own
    size, and both go into one SigLIP loss (every pair is still a negative of every other). The split is
    drawn from a generator seeded by (seed, step) alone, so a resumed run draws the same split.
    """
    forward.train()
    with autocast(precision, images.device):
        split = None
        if config.multi_resolution is not None:
            generator = torch.Generator(device=images.device).manual_seed(split_seed(config.seed, step))
            order = torch.randperm(len(tokens), generator=generator, device=images.device)
            split = order.split([len(order) - len(order) // 2, len(order) // 2])
        image_features, text_features, scale, bias = forward(images, tokens, split, config.multi_resolution)
        loss = loss_fn(image_features, text_features, scale, bias)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(parameters, config.optim.grad_clip)
    scaler.step(optimizer)  # fp16: skipped if a gradient overflowed (the scale then backs off)
    scaler.update()
    return loss.detach()


def flops_per_step(model: ImageTextModel, config: TrainConfig) -> float:
    """The FLOPs of one step: forward + backward ≈ 3 forwards on the b trained (with --multi-resolution,
    b/2 of them at R), plus one forward on the B scored by online JEST (at --score-resolution if set).
    F(R) counts the text tower too, which a lower image resolution does not shrink."""
    low = config.batch_size // 2 if config.multi_resolution is not None else 0
    trained = (config.batch_size - low) * model.forward_flops()
    if low:
        trained += low * model.forward_flops(config.multi_resolution)
    scored = config.super_batch * model.forward_flops(config.online.score_resolution) if config.online else 0
    return 3 * trained + scored


def _check_resolutions(model: ImageTextModel, config: TrainConfig) -> None:
    """Whether the model can encode at --score-resolution and --multi-resolution (a ViT, a multiple of its
    patch size, at most its own size), else one line naming the option."""
    settings = {
        "--score-resolution": config.online.score_resolution if config.online else None,
        "--multi-resolution": config.multi_resolution,
    }
    for option, resolution in settings.items():
        if resolution is not None:
            model.check_resolution(resolution, option)


def _finite(model: ImageTextModel, optimizer: torch.optim.Optimizer) -> bool:
    """Whether every weight and every AdamW moment is finite: what a checkpoint would hold (one sync)."""
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    device = tensors[0].device
    for state in optimizer.state.values():
        # AdamW's moments; its step counters stay on the CPU (and cannot be stacked with CUDA results)
        tensors += [
            t for t in state.values() if torch.is_tensor(t) and t.is_floating_point() and t.device == device
        ]
    return bool(torch.stack([t.isfinite().all() for t in tensors]).all())


def _diverged(run: Path, what: str, saved_step: int | None) -> CurateError:
    """The one-line error of a run whose loss or weights became NaN or infinite: nothing of it is saved."""
    kept = (
        f"{run / LATEST_FILE} holds the last good checkpoint, step {saved_step}"
        if saved_step is not None
        else "no checkpoint was saved"
    )
    return CurateError(f"training diverged: {what}; {kept}. Train again with a lower --lr (or more --warmup)")


def _learning_rate(step: int, optim: OptimConfig, steps: int) -> float:
    """Linear warmup, then cosine decay to zero at the last step: a pure function of the step, so a
    checkpoint needs no scheduler state."""
    if step < optim.warmup:
        return optim.lr * (step + 1) / optim.warmup
    progress = (step - optim.warmup) / max(1, steps - optim.warmup)
    return 0.5 * optim.lr * (1 + math.cos(math.pi * progress))


def _optimizer(model: ImageTextModel, optim: OptimConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on gains, biases, embeddings of position and the logit scale and bias
    (the usual CLIP/SigLIP split: decay only matrices that mix features)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if (
            parameter.ndim < 2
            or "logit_" in name
            or "positional_embedding" in name
            or "class_embedding" in name
        ):
            no_decay.append(parameter)
        else:
            decay.append(parameter)
    groups = [{"params": decay, "weight_decay": optim.wd}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=optim.lr, betas=(0.9, optim.beta2), eps=1e-6)


def _evaluator(config: TrainConfig, model: ImageTextModel, device, precision) -> Callable[[], dict] | None:
    if not config.eval:
        return None
    from curate.evaluate import EvalSet, evaluate

    evalset = EvalSet.load(config.eval, preprocess=model.preprocess)  # decoded once, before step 1

    def run() -> dict:
        model.train(False)
        return evaluate(model, evalset, device=device, precision=precision)

    return run
