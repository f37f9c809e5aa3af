"""Eval sets in clip_benchmark's layout (docs/reference/formats.md, "Eval sets"): the writer, the reader, and
`EvalSet`, a set read once with its images decoded for a model.

EVAL/test/0.tar [1.tar ...]                      {key}.png|jpg|webp + {key}.cls (label) [+ {key}.txt]
EVAL/test/nshards.txt                            optional: the shard count (clip_benchmark writes it)
EVAL/classnames.txt                              line i names label i
EVAL/zeroshot_classification_templates.txt       one prompt per line, {c} for the class name
EVAL/dataset_type.txt                            optional: "retrieval" for sets with captions and no labels

A `.txt` holds one caption per line; clip_benchmark's retrieval sets (COCO, Flickr) put five there.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from curate.errors import CurateError
from curate.fileio import atomic_open, basename, filesystem, join
from curate.shards.images import decode_rgb, image_decodes
from curate.shards.reader import ReadStats, iter_members
from curate.shards.schema import CAPTION_EXTENSION, IMAGE_EXTENSIONS
from curate.shards.writer import write_tar

CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
DATASET_TYPE_FILE = "dataset_type.txt"
NSHARDS_FILE = "nshards.txt"
LABEL_EXTENSION = "cls"
CLASS_PLACEHOLDER = "{c}"
# Images decoded at load are kept up to this size (a 10k-image set at 224 px is ~6 GB in fp32: decoded
# again at each eval instead). Small eval sets, the ones evaluated during training, always fit.
CACHE_BYTES = 2 * 2**30
DECODE_BATCH = 256


def write_eval_set(
    folder: str,
    images: Sequence[bytes],
    labels: Sequence[int],
    captions: Sequence[str],
    classnames: Sequence[str],
    templates: Sequence[str],
    image_ext: str = "png",
) -> None:
    fs, path = filesystem(join(folder, "test"))
    fs.makedirs(path, exist_ok=True)
    samples = (
        (
            f"{index:07d}",
            [(image_ext, image), (LABEL_EXTENSION, str(label).encode()), ("txt", caption.encode())],
        )
        for index, (image, label, caption) in enumerate(zip(images, labels, captions, strict=True))
    )
    write_tar(join(folder, "test/0.tar"), samples)
    with atomic_open(join(folder, CLASSNAMES_FILE), "w") as handle:
        handle.write("".join(f"{name}\n" for name in classnames))
    with atomic_open(join(folder, TEMPLATES_FILE), "w") as handle:
        handle.write("".join(f"{template}\n" for template in templates))


@dataclass(frozen=True)
class EvalSample:
    key: str
    image: bytes  # encoded, as stored in the tar; it decoded when read
    label: int | None  # None in a retrieval set
    captions: tuple[str, ...]  # the lines of {key}.txt; () when it has none


@dataclass
class RawEvalSet:
    """An eval set as read from disk, images still encoded: what `read_eval_set` returns."""

    folder: str
    dataset_type: str  # "classification" or "retrieval"
    samples: list[EvalSample]
    classnames: list[str] | None  # None in a retrieval set
    templates: list[str] | None
    skipped: Counter = field(default_factory=Counter)  # reason -> samples left out
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (tar, why it ended early)

    @property
    def has_captions(self) -> bool:
        """Retrieval needs a caption for every image: a partly captioned set would rank unequal pools."""
        return bool(self.samples) and all(sample.captions for sample in self.samples)


def read_eval_set(folder: str, split: str = "test") -> RawEvalSet:
    """Read every sample of `folder/split/*.tar` plus the class names and templates beside them.

    Samples that cannot be used (no image, an image that does not decode, no or a bad label) are skipped
    and counted by reason; a damaged tar keeps what was read before the damage. A layout that cannot be
    evaluated at all (no folder, no tars, no samples, no class names or templates for a classification
    set, a label past the last class name) is a `CurateError`.
    """
    folder = str(folder).rstrip("/")
    fs, path = filesystem(folder)
    if not fs.isdir(path):
        raise CurateError(f"no such eval set folder: {folder}")
    dataset_type = (_read_lines(folder, DATASET_TYPE_FILE) or ["classification"])[0].lower()
    if dataset_type not in ("classification", "retrieval"):
        raise CurateError(
            f"{join(folder, DATASET_TYPE_FILE)} says {dataset_type!r}; "
            "only classification and retrieval sets are supported"
        )
    shards = _eval_shards(folder, split)
    classnames = templates = None
    if dataset_type == "classification":
        classnames = _required_lines(folder, CLASSNAMES_FILE, "one class name per line, line i = label i")
        templates = _required_lines(folder, TEMPLATES_FILE, "one prompt per line with {c} for the class name")
        for template in templates:
            if CLASS_PLACEHOLDER not in template:
                raise CurateError(f"{join(folder, TEMPLATES_FILE)}: template {template!r} has no {{c}}")
    stats = ReadStats()
    samples: list[EvalSample] = []
    for tar in shards:
        for key, members in iter_members(tar, stats):
            sample, reason = _to_eval_sample(key, members, dataset_type)
            if sample is None:
                stats.skipped[reason] += 1
                continue
            if classnames is not None and sample.label >= len(classnames):
                raise CurateError(
                    f"{tar}: sample {key} has label {sample.label} but {CLASSNAMES_FILE} names "
                    f"{len(classnames)} classes (labels 0..{len(classnames) - 1})"
                )
            samples.append(sample)
    if not samples:
        skipped = ", ".join(f"{reason} {n}" for reason, n in sorted(stats.skipped.items()))
        because = f" (skipped: {skipped})" if skipped else ""
        raise CurateError(f"no usable samples in {join(folder, split)}/*.tar{because}")
    return RawEvalSet(folder, dataset_type, samples, classnames, templates, stats.skipped, stats.bad_shards)


def _eval_shards(folder: str, split: str) -> list[str]:
    """`nshards.txt` names exactly `0.tar .. n-1.tar`; without it, every tar in natural order (2 < 10)."""
    split_folder = join(folder, split)
    fs, path = filesystem(split_folder)
    if not fs.isdir(path):
        raise CurateError(
            f"{folder} has no {split}/ folder: an eval set holds {split}/0.tar, {CLASSNAMES_FILE} and "
            f"{TEMPLATES_FILE} (clip_benchmark's webdataset layout)"
        )
    count = _read_lines(split_folder, NSHARDS_FILE)
    if count:
        try:
            names = [f"{index}.tar" for index in range(int(count[0]))]
        except ValueError:
            raise CurateError(
                f"{join(split_folder, NSHARDS_FILE)} holds {count[0]!r}, not a number"
            ) from None
        missing = [name for name in names if not fs.isfile(f"{path}/{name}")]
        if missing:
            raise CurateError(f"{join(split_folder, NSHARDS_FILE)} says {len(names)} shards: no {missing[0]}")
    else:
        names = sorted((basename(p) for p in fs.glob(f"{path}/*.tar")), key=_natural_key)
    if not names:
        raise CurateError(f"no .tar shards in {split_folder}")
    return [join(split_folder, name) for name in names]


def _to_eval_sample(key: str, members: dict[str, bytes], dataset_type: str):
    image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in members), None)
    if image_ext is None:
        return None, "missing_image"
    captions = tuple(
        line.strip()
        for line in members.get(CAPTION_EXTENSION, b"").decode("utf-8", errors="replace").splitlines()
        if line.strip()
    )
    label = None
    if dataset_type == "classification":
        if LABEL_EXTENSION not in members:
            return None, "missing_label"
        try:
            label = int(members[LABEL_EXTENSION].decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            return None, "bad_label"
        if label < 0:
            return None, "bad_label"
    elif not captions:
        return None, "missing_caption"
    if not image_decodes(members[image_ext]):
        return None, "undecodable_image"
    return EvalSample(key, members[image_ext], label, captions), None


def _required_lines(folder: str, name: str, what: str) -> list[str]:
    lines = _read_lines(folder, name)
    if lines is None:
        raise CurateError(f"{join(folder, name)} is missing: zero-shot classification needs it ({what})")
    if not lines:
        raise CurateError(f"{join(folder, name)} is empty: zero-shot classification needs {what}")
    return lines


def _read_lines(folder: str, name: str) -> list[str] | None:
    """The file's non-blank lines, stripped (as clip_benchmark reads them); None when it does not exist."""
    fs, path = filesystem(join(folder, name))
    if not fs.isfile(path):
        return None
    with fs.open(path, "rb") as handle:
        text = handle.read().decode("utf-8", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


class EvalSet:
    """An eval set read once: labels, captions, class names, templates and the images.

    Loaded with a `preprocess` (the trainer's case: one model evaluated every N steps), its images are
    decoded there, once, so a broken set fails before the first step; they are kept when they fit in
    `cache_bytes`, else decoded again with that preprocess at each evaluation. Loaded without one, each
    evaluation decodes them with the model's preprocess as it goes, and nothing is kept.
    """

    def __init__(self, raw: RawEvalSet, preprocess: Callable | None = None, cache_bytes: int = CACHE_BYTES):
        self.raw = raw
        self.preprocess = preprocess
        self.labels = (
            torch.tensor([s.label for s in raw.samples]) if raw.dataset_type == "classification" else None
        )
        self.captions = [s.captions for s in raw.samples] if raw.has_captions else None
        self.decoded: torch.Tensor | None = None  # (N, C, H, W), when decoded at load and kept
        if preprocess is not None:
            self.decoded = self._decode_once(cache_bytes)

    @classmethod
    def load(
        cls,
        folder: str,
        split: str = "test",
        preprocess: Callable | None = None,
        cache_bytes: int = CACHE_BYTES,
    ) -> EvalSet:
        """Read `folder` (see `read_eval_set`), decoding its images now when `preprocess` is given."""
        return cls(read_eval_set(folder, split), preprocess, cache_bytes)

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

    def image_batches(self, batch_size: int, preprocess: Callable | None = None) -> Iterator[torch.Tensor]:
        """The images, preprocessed, in sample order, `batch_size` at a time: those decoded at load, else
        decoded now with the preprocess given at load (when there was one) or here."""
        if self.decoded is not None:
            yield from self.decoded.split(batch_size)
            return
        preprocess = self.preprocess or preprocess
        if preprocess is None:
            raise ValueError("this eval set was loaded without a preprocess: pass the model's")
        yield from _decode_batches([s.image for s in self.raw.samples], preprocess, batch_size)

    def _decode_once(self, cache_bytes: int) -> torch.Tensor | None:
        images = [sample.image for sample in self.raw.samples]
        parts: list[torch.Tensor] = []
        keep = None
        for batch in _decode_batches(images, self.preprocess, DECODE_BATCH):
            if keep is None:  # from the first batch: never two copies of a large set in memory
                keep = batch[0].numel() * batch.element_size() * len(images) <= cache_bytes
            if keep:
                parts.append(batch)
        return torch.cat(parts) if keep else None


def _decode_batches(images: list[bytes], preprocess: Callable, batch_size: int) -> Iterator[torch.Tensor]:
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL frees the GIL
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            yield torch.stack(list(pool.map(lambda data: preprocess(decode_rgb(data)), chunk)))
