"""The eval metrics as functions of embeddings (and, for class embeddings, of the text tower alone).

Zero-shot follows CLIP: a class's embedding is the mean over templates of the normalised embeddings of
"a photo of a {c}." etc., renormalised; an image's prediction is its nearest class. Retrieval ranks, for
each image, the eval set's captions (image→text) and, for each caption, the images (text→image).

Captions are compared as strings: identical captions are one candidate, positive for every image that has
it. So a caption shared by two images (synthetic and web sets have many) neither crowds the top k with
copies of itself nor turns a correct answer into a miss because its twin, on the other image, was ranked
first. With one distinct caption per image this is exactly clip_benchmark's recall@k; with several
captions per image (COCO, Flickr) an image→text hit is any of its captions in the top k, and text→image
averages over every caption, duplicates included.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from curate.evaluate.evalset import CLASS_PLACEHOLDER
from curate.models import ImageTextModel
from curate.runtime import autocast

KS = (1, 5)
CHUNK = 1024  # similarity rows per step: CHUNK × (captions or images) floats, never the full matrix


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
