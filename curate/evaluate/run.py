"""`curate eval`'s unit and its driver.

The unit, `evaluate`, takes a loaded model, so `curate train --eval` calls it every few steps on an
`EvalSet` read and decoded once. The driver, `run_eval` (what `curate eval` calls), reads the set, loads the
model, runs the same unit once and reports.
"""

from __future__ import annotations

import time

import torch

from curate.errors import CurateError
from curate.evaluate.config import EvalConfig, EvalReport
from curate.evaluate.evalset import EvalSet
from curate.evaluate.metrics import class_embeddings, retrieval_metrics, zeroshot_metrics
from curate.models import ImageTextModel, load_model
from curate.runtime import Progress, autocast, resolve_device, resolve_precision


def evaluate(
    model: ImageTextModel,
    evalset: EvalSet | str,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    precision: str = "auto",
    progress: Progress | None = None,
) -> dict[str, float | int]:
    """Zero-shot top-1/top-5 and retrieval recall@1/@5 of `model` on `evalset`, plus counts.

    `device` is where the model already is (by default, where its parameters are); nothing is moved but
    the inputs. A model in training mode is evaluated in eval mode and handed back in training mode. An
    `EvalSet` loaded with a preprocess is evaluated on the images it decoded with that preprocess.
    Keys: zeroshot_top1, zeroshot_top5 (≥5 classes), zeroshot_mean_per_class_recall, image_to_text_r1/_r5,
    text_to_image_r1/_r5 (when every image has a caption), images, classes, templates, captions.
    """
    if batch_size < 1:
        raise CurateError(f"--batch-size must be at least 1, got {batch_size}")
    if isinstance(evalset, str):
        evalset = EvalSet.load(evalset)
    if device is None:
        device = model.device
    device = resolve_device(device) if isinstance(device, str) else device
    precision = resolve_precision(precision, device)
    training = model.training
    model.train(False)
    try:
        with torch.no_grad():
            return _evaluate(model, evalset, batch_size, device, precision, progress)
    finally:
        model.train(training)


def _evaluate(model, evalset: EvalSet, batch_size, device, precision, progress) -> dict[str, float | int]:
    parts, done = [], 0
    for images in evalset.image_batches(batch_size, model.preprocess):
        with autocast(precision, device):
            parts.append(model.encode_images(images.to(device, non_blocking=True)))
        done += len(images)
        if progress:
            progress(done, len(evalset))
    image_emb = torch.cat(parts)
    metrics: dict[str, float | int] = {}
    counts: dict[str, float | int] = {"images": len(evalset)}
    if evalset.labels is not None:
        classes = class_embeddings(
            model, evalset.classnames, evalset.templates, batch_size, device, precision
        )
        metrics.update(zeroshot_metrics(image_emb, classes, evalset.labels.to(device)))
        counts.update(classes=len(evalset.classnames), templates=len(evalset.templates))
    if evalset.captions is not None:
        strings, pairs, weights = evalset.caption_index()
        texts = []
        for start in range(0, len(strings), batch_size):
            tokens = model.tokenizer(strings[start : start + batch_size]).to(device)
            with autocast(precision, device):
                texts.append(model.encode_texts(tokens))
        metrics.update(retrieval_metrics(image_emb, torch.cat(texts), pairs.to(device), weights.to(device)))
        counts.update(captions=int(weights.sum()), distinct_captions=len(strings))
    return metrics | counts


def run_eval(evalset: str, config: EvalConfig, progress: Progress | None = None) -> EvalReport:
    """The driver of `curate eval`: read the set first (a typo fails in a second), then load the model and
    evaluate."""
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    data = EvalSet.load(evalset, config.split)
    model = load_model(config.model, config.pretrained, device, config.allow_random_init)
    start = time.perf_counter()
    metrics = evaluate(model, data, config.batch_size, device, precision, progress)
    return EvalReport(
        model=config.model,
        evalset=evalset,
        metrics=metrics,
        device=f"{device.type} {precision}",
        seconds=time.perf_counter() - start,
        skipped=data.raw.skipped,
        damaged=data.raw.damaged,
        captioned=sum(bool(sample.captions) for sample in data.raw.samples),
    )
