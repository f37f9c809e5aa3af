"""`curate eval`: zero-shot classification and image–text retrieval on an eval set.

Zero-shot follows CLIP: a class's embedding is the mean over templates of the normalised embeddings of
"a photo of a {c}." etc., renormalised; an image's prediction is its nearest class. Retrieval ranks, for
each image, the eval set's captions (image→text) and, for each caption, the images (text→image).

Captions are compared as strings: identical captions are one candidate, positive for every image that has
it. So a caption shared by two images (synthetic and web sets have many) neither crowds the top k with
copies of itself nor turns a correct answer into a miss because its twin, on the other image, was ranked
first. With one distinct caption per image this is exactly clip_benchmark's recall@k; with several
captions per image (COCO, Flickr) an image→text hit is any of its captions in the top k, and text→image
averages over every caption, duplicates included.

`evaluate` takes a loaded model, so `curate train --eval` calls it every few steps on an `EvalSet` read
and decoded once; `run_eval` is the whole command: read the set, load the model, evaluate.
"""

from __future__ import annotations

import io
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from PIL import Image

from curate.errors import CurateError
from curate.evalsets import CLASS_PLACEHOLDER, RawEvalSet, read_eval_set
from curate.models import ImageTextModel, load_model
from curate.runtime import autocast, resolve_device, resolve_precision

KS = (1, 5)
# Decoded images are kept between evals up to this size (a 10k-image set at 224 px is ~6 GB in fp32:
# re-decoded each time instead). Small eval sets, the ones evaluated during training, always fit.
CACHE_BYTES = 2 * 2**30
CHUNK = 1024  # similarity rows per step: CHUNK × (captions or images) floats, never the full matrix

Progress = Callable[[int, int | None], None]


# ---------------------------------------------------------------------------------------------- eval set


class EvalSet:
    """An eval set read once: labels, captions, class names, templates, and images decoded on demand.

    Images are decoded with the preprocess of the model being evaluated and kept (for the last preprocess
    used, within `cache_bytes`), so evaluating a training model every N steps decodes them once.
    """

    def __init__(self, raw: RawEvalSet, cache_bytes: int = CACHE_BYTES):
        self.raw = raw
        self.cache_bytes = cache_bytes
        self.labels = (
            torch.tensor([s.label for s in raw.samples]) if raw.dataset_type == "classification" else None
        )
        self.captions = [s.captions for s in raw.samples] if raw.has_captions else None
        self._cache: tuple[Callable, torch.Tensor] | None = None

    @classmethod
    def load(cls, folder: str, split: str = "test", preprocess: Callable | None = None) -> EvalSet:
        """Read `folder` (see `read_eval_set`); with `preprocess`, decode its images now, so a trainer
        pays for it at setup and a broken set fails before the first step."""
        evalset = cls(read_eval_set(folder, split))
        if preprocess is not None:
            for _ in evalset.image_batches(preprocess, 256):
                pass
        return evalset

    def __len__(self) -> int:
        return len(self.raw.samples)

    @property
    def classnames(self) -> list[str] | None:
        return self.raw.classnames

    @property
    def templates(self) -> list[str] | None:
        return self.raw.templates

    def caption_index(self) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """(distinct captions, (P, 2) long pairs [image, caption index], (M,) count of each caption)."""
        if self.captions is None:
            raise ValueError("this eval set has no captions")
        index: dict[str, int] = {}
        counts: Counter = Counter()
        pairs: set[tuple[int, int]] = set()
        for image, captions in enumerate(self.captions):
            for caption in captions:
                text = index.setdefault(caption, len(index))
                counts[text] += 1
                pairs.add((image, text))
        weights = torch.tensor([counts[i] for i in range(len(index))], dtype=torch.float32)
        return list(index), torch.tensor(sorted(pairs), dtype=torch.long), weights

    def image_batches(self, preprocess: Callable, batch_size: int) -> Iterator[torch.Tensor]:
        """The images, preprocessed, in sample order, `batch_size` at a time."""
        if self._cache is not None and self._cache[0] is preprocess:
            yield from self._cache[1].split(batch_size)
            return
        self._cache = None  # one preprocess at a time: never two copies of a large set in memory
        images = [sample.image for sample in self.raw.samples]
        parts: list[torch.Tensor] = []
        keep = None
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL frees the GIL
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size]
                batch = torch.stack(list(pool.map(lambda data: _decode(data, preprocess), chunk)))
                if keep is None:
                    keep = batch[0].numel() * batch.element_size() * len(images) <= self.cache_bytes
                if keep:
                    parts.append(batch)
                yield batch
        if keep:
            self._cache = (preprocess, torch.cat(parts))


def _decode(data: bytes, preprocess: Callable) -> torch.Tensor:
    with Image.open(io.BytesIO(data)) as image:
        return preprocess(image.convert("RGB"))  # grayscale, palette and RGBA images too


# ---------------------------------------------------------------------------------------------- metrics


def class_embeddings(
    model: ImageTextModel,
    classnames: Sequence[str],
    templates: Sequence[str],
    batch_size: int,
    device: torch.device,
    precision: str,
) -> torch.Tensor:
    """(C, D): per class, the renormalised mean of its templates' normalised text embeddings."""
    per_batch = max(1, batch_size // len(templates))  # whole classes per forward pass
    parts = []
    for start in range(0, len(classnames), per_batch):
        chunk = classnames[start : start + per_batch]
        # str.replace, not str.format: a template may hold other braces.
        prompts = [template.replace(CLASS_PLACEHOLDER, name) for name in chunk for template in templates]
        with autocast(precision, device):
            texts = model.encode_texts(model.tokenizer(prompts).to(device))
        parts.append(F.normalize(texts.view(len(chunk), len(templates), -1).mean(1), dim=-1))
    return torch.cat(parts)


def zeroshot_metrics(
    image_emb: torch.Tensor,
    class_emb: torch.Tensor,
    labels: torch.Tensor,
    ks: Sequence[int] = KS,
    chunk: int = CHUNK,
) -> dict[str, float]:
    """Top-k accuracy (for each k up to the number of classes) and mean per-class recall of the top 1."""
    classes = len(class_emb)
    ks = [k for k in ks if k <= classes]
    hits = dict.fromkeys(ks, 0)
    predicted = []
    for start in range(0, len(image_emb), chunk):
        top = (image_emb[start : start + chunk] @ class_emb.T).topk(max(ks), dim=1).indices
        correct = top == labels[start : start + chunk, None]
        for k in ks:
            hits[k] += int(correct[:, :k].any(1).sum())
        predicted.append(top[:, 0])
    right = torch.cat(predicted) == labels
    per_class = torch.bincount(labels[right], minlength=classes).double() / torch.bincount(
        labels, minlength=classes
    )
    metrics = {f"zeroshot_top{k}": hits[k] / len(labels) for k in ks}
    metrics["zeroshot_mean_per_class_recall"] = float(per_class.nanmean())  # over classes with images
    return metrics


def retrieval_metrics(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    pairs: torch.Tensor,
    text_weights: torch.Tensor,
    ks: Sequence[int] = KS,
    chunk: int = CHUNK,
) -> dict[str, float]:
    """Recall@k both ways. `pairs` (P, 2) lists every (image, text) that match; a text's weight is how many
    captions it stands for. k larger than the pool it ranks is left out (it would be 1 by construction)."""
    metrics = {}
    for name, queries, keys, matches, weights in (
        ("image_to_text", image_emb, text_emb, pairs, None),
        ("text_to_image", text_emb, image_emb, pairs.flip(1), text_weights),
    ):
        valid = [k for k in ks if k <= len(keys)]
        if not valid:
            continue
        hits = torch.zeros(len(valid), dtype=torch.float64)
        for start in range(0, len(queries), chunk):
            stop = min(start + chunk, len(queries))
            top = (queries[start:stop] @ keys.T).topk(max(valid), dim=1).indices
            own = matches[(matches[:, 0] >= start) & (matches[:, 0] < stop)]
            positive = torch.zeros(stop - start, len(keys), dtype=torch.bool, device=queries.device)
            positive[own[:, 0] - start, own[:, 1]] = True
            found = positive.gather(1, top)
            weight = (
                torch.ones(stop - start, dtype=torch.float64, device=queries.device)
                if weights is None
                else weights[start:stop].double()
            )
            for i, k in enumerate(valid):
                hits[i] += float((found[:, :k].any(1).double() * weight).sum())
        total = len(queries) if weights is None else float(weights.sum())
        metrics.update({f"{name}_r{k}": float(hits[i]) / total for i, k in enumerate(valid)})
    return metrics


# ---------------------------------------------------------------------------------------------- evaluate


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
    the inputs. A model in training mode is evaluated in eval mode and handed back in training mode.
    Keys: zeroshot_top1, zeroshot_top5 (≥5 classes), zeroshot_mean_per_class_recall, image_to_text_r1/_r5,
    text_to_image_r1/_r5 (when every image has a caption), images, classes, templates, captions.
    """
    if batch_size < 1:
        raise CurateError(f"--batch-size must be at least 1, got {batch_size}")
    if isinstance(evalset, str):
        evalset = EvalSet.load(evalset)
    if device is None:
        device = next(model.module.parameters()).device
    device = resolve_device(device) if isinstance(device, str) else device
    precision = resolve_precision(precision, device)
    training = model.module.training
    model.module.eval()
    try:
        with torch.no_grad():
            return _evaluate(model, evalset, batch_size, device, precision, progress)
    finally:
        model.module.train(training)


def _evaluate(model, evalset: EvalSet, batch_size, device, precision, progress) -> dict[str, float | int]:
    parts, done = [], 0
    for images in evalset.image_batches(model.preprocess, batch_size):
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


# ---------------------------------------------------------------------------------------------- command


@dataclass(frozen=True)
class EvalConfig:
    model: str
    pretrained: str | None = None
    batch_size: int = 256
    device: str = "auto"
    precision: str = "auto"
    split: str = "test"
    allow_random_init: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise CurateError(f"--batch-size must be at least 1, got {self.batch_size}")


@dataclass
class EvalReport:
    model: str
    evalset: str
    metrics: dict[str, float | int]
    device: str  # "cpu fp32"
    seconds: float
    skipped: Counter = field(default_factory=Counter)  # reason -> samples left out of the eval set
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (tar, why it ended early)
    captioned: int = 0  # images with a caption: retrieval needs all of them

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "evalset": self.evalset,
            **self.metrics,
            "skipped": dict(sorted(self.skipped.items())),
            "device": self.device,
            "seconds": round(self.seconds, 3),
        }


def run_eval(evalset: str, config: EvalConfig, progress: Progress | None = None) -> EvalReport:
    """`curate eval`: read the set first (a typo fails in a second), then load the model and evaluate."""
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
