"""Decide every synthetic sample up front from one seed: its scene, its caption and its noise.

Planning is cheap and sequential, so the (expensive) rendering can run shard by shard in any order and in
any process and still give byte-identical files.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from curate.errors import CurateError
from curate.synth.captions import describe, describe_partially, junk
from curate.synth.scenes import Scene
from curate.synth.vocabulary import BACKGROUND_TONES, BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES
from curate.validate import check, fraction

NOISE_KINDS = ("none", "misaligned", "junk", "partial", "duplicate", "corrupt")


@dataclass(frozen=True)
class NoiseRates:
    """Share of the web set given each kind of noise; the rest is clean (`none`)."""

    misaligned: float = 0.15  # the caption of another image
    junk: float = 0.08  # "IMG_2041.JPG", "click here", "untitled"
    partial: float = 0.10  # the caption names one attribute only
    duplicate: float = 0.07  # an exact or near copy of another pair
    corrupt: float = 0.01  # image bytes that do not decode

    def __post_init__(self) -> None:
        rates = self.as_dict()
        for kind, rate in rates.items():
            check(fraction(rate), f"--{kind}", "in [0, 1]", rate)
        if sum(rates.values()) > 1.0:
            options = ", ".join(f"--{kind}" for kind in rates)
            raise CurateError(f"noise rates ({options}) must sum to at most 1, got {rates}")

    def as_dict(self) -> dict[str, float]:
        return {kind: getattr(self, kind) for kind in NOISE_KINDS[1:]}


@dataclass(frozen=True)
class PlannedSample:
    scene: Scene
    caption: str
    noise: str
    label: int  # class index (colour × shape) of the image, whatever the caption says
    quality: int = 90  # JPEG quality; near duplicates differ from their source here too
    corrupt_seed: int = -1  # >= 0: replace the encoded image by garbage derived from this seed
    # >= 0: a planted duplicate, copied from web sample `duplicate_of` (an index into the web set), so a
    # dedup's precision and recall can be computed exactly
    duplicate_of: int = -1


@dataclass(frozen=True)
class SynthPlan:
    web: list[PlannedSample] = field(default_factory=list)
    curated: list[PlannedSample] = field(default_factory=list)
    eval: list[PlannedSample] = field(default_factory=list)
    classes: list[int] = field(default_factory=list)  # the class indices present, ascending (eval's names)


CLASSES = len(COLOURS) * len(SHAPES)
CONCEPT_QUALITY = (50, 96)  # JPEG qualities of a --concepts crawl, [low, high): one more way to vary


def class_probabilities(zipf: float, rng: np.random.Generator, classes: int = CLASSES) -> np.ndarray:
    """Long-tailed class frequencies, p(rank r) ∝ 1 / r^zipf, with the ranks shuffled by the seed."""
    weights = 1.0 / np.arange(1, classes + 1) ** zipf
    return rng.permutation(weights / weights.sum())


def plan(
    n: int,
    seed: int,
    noise: NoiseRates,
    curated: int,
    eval_per_class: int,
    zipf: float,
    concepts: int | None = None,
) -> SynthPlan:
    """Every sample of the three sets. `concepts` K: only K seeded classes (in all three sets), each drawn
    with more variation (JPEG quality too), so most pairs of a batch show the same thing in other words.
    Without it the random stream is the one it always was: a seed plans the samples it always planned."""
    web_rng, curated_rng, eval_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    if concepts is None:
        classes = np.arange(CLASSES)
    else:
        check(1 <= concepts <= CLASSES, "--concepts", f"between 1 and {CLASSES}", concepts)
        classes = np.sort(web_rng.choice(CLASSES, size=concepts, replace=False))
    varied = concepts is not None
    probabilities = class_probabilities(zipf, web_rng, len(classes))
    labels = classes[web_rng.choice(len(probabilities), size=n, p=probabilities)]
    web = [_clean(int(label), web_rng, varied) for label in labels]
    web = _add_noise(web, noise, web_rng)
    uniform = np.full(len(probabilities), 1.0 / len(probabilities))
    curated_samples = [
        _clean(int(classes[c]), curated_rng, varied)
        for c in curated_rng.choice(len(uniform), size=curated, p=uniform)
    ]
    eval_samples = [_clean(int(label), eval_rng) for label in classes for _ in range(eval_per_class)]
    return SynthPlan(web=web, curated=curated_samples, eval=eval_samples, classes=classes.tolist())


def _clean(label: int, rng: np.random.Generator, varied: bool = False) -> PlannedSample:
    colour, shape = list(COLOURS)[label // len(SHAPES)], list(SHAPES)[label % len(SHAPES)]
    scene = Scene(
        shape=shape,
        colour=colour,
        size=list(SIZES)[rng.integers(len(SIZES))],
        position=list(POSITIONS)[rng.integers(len(POSITIONS))],
        background=list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))],
        tone=int(rng.integers(len(BACKGROUND_TONES))),
        dx=float(rng.uniform(-0.04, 0.04)),
        dy=float(rng.uniform(-0.04, 0.04)),
        angle=float(rng.uniform(-10, 10)),
        texture_seed=int(rng.integers(2**31)),
    )
    caption = describe(scene, rng)
    # Drawn last and only for --concepts, so the default crawl's random stream is unchanged.
    quality = int(rng.integers(*CONCEPT_QUALITY)) if varied else PlannedSample.quality
    return PlannedSample(scene=scene, caption=caption, noise="none", label=label, quality=quality)


def _add_noise(web: list[PlannedSample], rates: NoiseRates, rng: np.random.Generator) -> list[PlannedSample]:
    """Give each sample one noise kind, exactly round(rate · n) of each, at random positions."""
    n = len(web)
    kinds = np.array(["none"] * n, dtype=object)
    order = rng.permutation(n)
    start = 0
    for kind, rate in rates.as_dict().items():
        count = int(round(rate * n))
        kinds[order[start : start + count]] = kind
        start += count
    clean = np.flatnonzero(kinds == "none")
    noisy = list(web)
    for i, kind in enumerate(kinds):
        sample = web[i]
        if kind == "misaligned":
            other = _other(i, web, rng, lambda s, label=sample.label: s.label != label)
            noisy[i] = replace(sample, caption=web[other].caption, noise=kind)
        elif kind == "junk":
            noisy[i] = replace(sample, caption=junk(rng), noise=kind)
        elif kind == "partial":
            noisy[i] = replace(sample, caption=describe_partially(sample.scene, rng), noise=kind)
        elif kind == "duplicate" and len(clean):
            source = int(clean[rng.integers(len(clean))])
            noisy[i] = replace(_duplicate(web[source], rng), duplicate_of=source)
        elif kind == "corrupt":
            noisy[i] = replace(sample, noise=kind, corrupt_seed=int(rng.integers(2**31)))
    return noisy


def _duplicate(source: PlannedSample, rng: np.random.Generator) -> PlannedSample:
    """Half exact copies; half near copies (a nudge, another JPEG quality, a rephrased caption)."""
    if rng.random() < 0.5:
        return replace(source, noise="duplicate")
    scene = replace(source.scene, dx=source.scene.dx + float(rng.uniform(-0.02, 0.02)))
    return replace(
        source,
        scene=scene,
        caption=describe(scene, rng),
        noise="duplicate",
        quality=int(rng.integers(70, 95)),
    )


def _other(i: int, web: list[PlannedSample], rng: np.random.Generator, accept) -> int:
    for _ in range(100):
        j = int(rng.integers(len(web)))
        if j != i and accept(web[j]):
            return j
    return (i + 1) % len(web)  # a one-class world: any other sample will do
