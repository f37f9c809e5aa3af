"""`curate train`: the whole SigLIP training loop, readable in one sitting.

Sections: setup → data → resume → steps (online JEST, loss, update, log) → eval → checkpoint.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import torch
from open_clip.loss import SigLipLoss

from curate.errors import CurateError
from curate.fileio import atomic_open
from curate.models import ImageTextModel, load_checkpoint, load_model, save_checkpoint
from curate.runtime import autocast, resolve_device, resolve_precision
from curate.shards.paths import expand_shards
from curate.train.config import TRAJECTORY_FIELDS, TrainConfig
from curate.train.data import MemoryData, StreamData, fits_in_memory, load_memory_data
from curate.train.online import ReferenceBank, choose, load_reference

Progress = Callable[[int, int | None, str], None]


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
    missing_reference: int = 0
    evals: list[dict] = field(default_factory=list)

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0


def train(config: TrainConfig, progress: Progress | None = None) -> TrainSummary:
    # ---------------------------------------------------------------- setup
    run = Path(config.out)
    latest = run / "latest.pt"
    if latest.exists() and not config.resume:
        raise CurateError(
            f"{run} already holds a run: pass --resume to continue it, or choose another folder"
        )
    if config.resume and not latest.exists():
        raise CurateError(f"--resume: no {latest} to continue from")
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    torch.manual_seed(config.seed)
    paths = expand_shards(list(config.data))
    model = load_model(config.model, config.pretrained, device, allow_random_init=True, seed=config.seed)
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- data
    keep = _manifest_keys(config.manifest) if config.manifest else None
    bank: ReferenceBank | None = load_reference(config.ref, device) if config.online_jest else None
    memory = config.cache == "memory" or (config.cache == "auto" and fits_in_memory(paths, model.image_size))
    missing = 0
    if memory:
        data = load_memory_data(
            paths,
            model.preprocess,
            model.tokenizer,
            keep,
            config.workers,
            config.seed,
            progress=(lambda done, total: progress(done, total, "decoding")) if progress else None,
        )
        if bank is not None:
            data, missing = _only_referenced(data, bank)
    else:
        if bank is not None:
            keep = frozenset(bank.index) if keep is None else keep & frozenset(bank.index)
        data = None  # made after resume: the stream re-seeds from the step it starts at

    # ---------------------------------------------------------------- resume
    optimizer = _optimizer(model, config)
    start_step = 0
    if config.resume:
        start_step = _resume(latest, model, optimizer, config)
        _truncate_metrics(run / "metrics.jsonl", start_step)
    else:
        with atomic_open(str(run / "config.json"), "w") as handle:
            json.dump({"train": config.as_dict(), "model_config": model.config}, handle, indent=2)
    if data is None:
        data = StreamData(
            paths,
            model.preprocess,
            model.tokenizer,
            keep,
            config.shuffle_buffer,
            f"{config.seed}/{start_step}",
            config.super_batch,
            config.workers,
        )
    evaluator = _evaluator(config, model, device, precision)
    forward_flops = _forward_flops(model, device)
    # Compute per step: forward + backward ≈ 3 forwards on the b trained, plus one forward on the B scored.
    step_flops = 3 * forward_flops * config.batch_size + (forward_flops * config.super_batch if bank else 0)

    # ---------------------------------------------------------------- steps
    loss_fn = SigLipLoss()
    metrics = open(run / "metrics.jsonl", "a")  # noqa: SIM115 - kept open for the whole run
    window = _Window(device)
    losses, samples, last_loss = [], 0, float("nan")
    started = time.perf_counter()
    evals = []
    for step in range(start_step, config.steps):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, config)
        batch = data.batch(step, config.super_batch)
        if bank is not None:
            window.start("score")
            generator = torch.Generator(device=device).manual_seed(config.seed * 1_000_003 + step)
            choice = choose(
                model,
                bank,
                batch,
                config.criterion,
                config.ratio,
                config.chunks,
                config.temperature,
                generator,
                device,
                precision,
            )
            rows = choice.selection.indices.cpu()  # the host indexes the cache; one small copy per step
            window.add_choice(choice, [batch.noise[i] for i in rows.tolist()], batch.noise)
            images, tokens = batch.images[rows], batch.tokens[rows]
        else:
            images, tokens = batch.images, batch.tokens
        window.start("train")
        model.module.train()
        with autocast(precision, device):
            image_features, text_features = model.encode(
                images.to(device, non_blocking=True), tokens.to(device, non_blocking=True)
            )
            loss = loss_fn(
                image_features, text_features, model.module.logit_scale.exp(), model.module.logit_bias
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.module.parameters(), config.grad_clip)
        optimizer.step()
        window.stop()
        losses.append(loss.detach())
        samples += len(tokens)
        done = step + 1

        if done % config.log_every == 0 or done == config.steps:
            last_loss = float(torch.stack(losses).mean())  # the one host sync of a log window
            record = {
                "step": done,
                "loss": last_loss,
                "lr": optimizer.param_groups[0]["lr"],
                "samples_per_s": samples / (time.perf_counter() - started),
                "logit_scale": model.logit_scale,
                "logit_bias": model.logit_bias,
                "flops": step_flops * done,
                **window.report(),
            }
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            losses = []
            if progress:
                progress(
                    done, config.steps, f"loss {last_loss:.4f} · {record['samples_per_s']:.0f} samples/s"
                )

        # ------------------------------------------------------------ eval
        if evaluator and ((config.eval_every and done % config.eval_every == 0) or done == config.steps):
            result = {"step": done, "eval": evaluator()}
            evals.append(result)
            metrics.write(json.dumps(result) + "\n")
            metrics.flush()

        # ------------------------------------------------------------ checkpoint
        if (config.save_every and done % config.save_every == 0) or done == config.steps:
            _save(run, done, model, optimizer, config)
    metrics.close()
    return TrainSummary(
        run=str(run),
        steps=config.steps,
        start_step=start_step,
        samples=samples,
        seconds=time.perf_counter() - started,
        final_loss=last_loss,
        data_samples=len(data) if isinstance(data, MemoryData) else None,
        data_mode="memory" if isinstance(data, MemoryData) else "stream",
        missing_reference=missing,
        evals=evals,
    )


# -------------------------------------------------------------------- helpers


def _learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warmup, then cosine decay to zero at the last step."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return 0.5 * config.lr * (1 + math.cos(math.pi * progress))


def _optimizer(model: ImageTextModel, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on gains, biases, embeddings of position and the logit scale and bias
    (the usual CLIP/SigLIP split: decay only matrices that mix features)."""
    decay, no_decay = [], []
    for name, parameter in model.module.named_parameters():
        if (
            parameter.ndim < 2
            or "logit_" in name
            or "positional_embedding" in name
            or "class_embedding" in name
        ):
            no_decay.append(parameter)
        else:
            decay.append(parameter)
    groups = [{"params": decay, "weight_decay": config.wd}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, config.beta2), eps=1e-6)


def _save(run: Path, step: int, model: ImageTextModel, optimizer, config: TrainConfig) -> None:
    path = run / "checkpoints" / f"step_{step}.pt"
    save_checkpoint(
        path,
        model.open_clip_name,
        model.config,
        model.module.state_dict(),
        step=step,
        optimizer=optimizer.state_dict(),
        rng=torch.get_rng_state(),
        train_config=config.as_dict(),
    )
    with atomic_open(str(run / "latest.pt"), "wb") as handle, open(path, "rb") as source:
        shutil.copyfileobj(source, handle)


def _resume(latest: Path, model: ImageTextModel, optimizer, config: TrainConfig) -> int:
    payload = load_checkpoint(latest)
    saved = payload.get("train_config", {})
    changed = [
        name for name in TRAJECTORY_FIELDS if _normal(saved.get(name)) != _normal(getattr(config, name))
    ]
    if changed:
        raise CurateError(
            f"--resume with settings other than {latest}'s ({', '.join(changed)}): not the same run"
        )
    model.module.load_state_dict(payload["state_dict"])
    optimizer.load_state_dict(payload["optimizer"])
    torch.set_rng_state(payload["rng"])
    return int(payload["step"])


def _normal(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines past the checkpoint we resume from, so the log reads as one uninterrupted run."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    with atomic_open(str(path), "w") as handle:
        handle.write("".join(line + "\n" for line in kept))


def _manifest_keys(manifest: str) -> frozenset[str]:
    path = Path(manifest)
    path = path / "manifest.parquet" if path.is_dir() else path
    if not path.is_file():
        raise CurateError(f"no manifest at {manifest} (expected a folder with manifest.parquet)")
    return frozenset(pq.read_table(path, columns=["key"]).column("key").to_pylist())


def _only_referenced(data: MemoryData, bank: ReferenceBank) -> tuple[MemoryData, int]:
    present = [i for i, key in enumerate(data.keys) if key in bank.index]
    missing = len(data) - len(present)
    if not present:
        raise CurateError(
            "no training sample has a reference score: do --ref and the data hold the same keys?"
        )
    if missing:
        rows = torch.tensor(present)
        data = MemoryData(
            data.images[rows],
            data.tokens[rows],
            [data.keys[i] for i in present],
            [data.noise[i] for i in present],
            data.seed,
        )
    return data, missing


def _forward_flops(model: ImageTextModel, device: torch.device) -> float:
    """FLOPs of one sample through both towers, counted by torch on a batch of two (for the report's axes)."""
    from torch.utils.flop_counter import FlopCounterMode

    size = model.image_size
    images = torch.zeros(2, 3, size, size, device=device)
    tokens = model.tokenizer(["a photo", "a photo"]).to(device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.encode(images, tokens)
    return counter.get_total_flops() / 2


def _evaluator(config: TrainConfig, model: ImageTextModel, device, precision) -> Callable[[], dict] | None:
    if not config.eval:
        return None
    from curate.evaluate import EvalSet, evaluate

    evalset = EvalSet.load(config.eval, preprocess=model.preprocess)  # decoded once, before step 1

    def run() -> dict:
        model.module.eval()
        return evaluate(model, evalset, device=device, precision=precision)

    return run


class _Window:
    """Per-log-window statistics of online JEST and the time split, kept on the device until read."""

    def __init__(self, device: torch.device):
        self.device = device
        self._phase, self._since = None, 0.0
        self.reset()

    def reset(self) -> None:
        self.selected, self.random = [], []
        self.noise_selected: Counter = Counter()
        self.noise_seen: Counter = Counter()
        self.seconds: Counter = Counter()

    def start(self, phase: str) -> None:
        self.stop()
        self._phase, self._since = phase, time.perf_counter()

    def stop(self) -> None:
        # On CUDA this times launches, not kernels, unless something synced; the log step's sync bounds it.
        if self._phase:
            self.seconds[self._phase] += time.perf_counter() - self._since
            self._phase = None

    def add_choice(self, choice, selected_noise: list[str], seen_noise: list[str]) -> None:
        self.selected.append(choice.selected_score)
        self.random.append(choice.random_score)
        self.noise_selected.update(selected_noise)
        self.noise_seen.update(seen_noise)

    def report(self) -> dict:
        out: dict = {}
        if self.selected:
            out["selected_learnability"] = float(torch.stack(self.selected).mean())
            out["random_learnability"] = float(torch.stack(self.random).mean())
            if any(self.noise_seen):
                total_selected, total_seen = sum(self.noise_selected.values()), sum(self.noise_seen.values())
                out["noise_selected"] = {
                    k: v / total_selected for k, v in sorted(self.noise_selected.items())
                }
                out["noise_seen"] = {k: v / total_seen for k, v in sorted(self.noise_seen.items())}
        total = sum(self.seconds.values())
        if total and "score" in self.seconds:
            out["time_share"] = {k: v / total for k, v in sorted(self.seconds.items())}
        self.reset()
        return out
