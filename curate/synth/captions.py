"""Captions for scenes: clean ones from varied templates and synonyms, and the web's usual failures."""

from __future__ import annotations

import numpy as np

from curate.synth.scenes import Scene
from curate.synth.vocabulary import BACKGROUNDS, COLOURS, JUNK, POSITIONS, SHAPES, SIZES, TEMPLATES


def describe(scene: Scene, rng: np.random.Generator) -> str:
    """A full caption: colour and shape always, size, position and background as the template has them."""
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    words = {
        "c": _pick(COLOURS[scene.colour][1], rng),
        "s": _pick(SHAPES[scene.shape], rng),
        "z": _pick(SIZES[scene.size][1], rng),
        "p": _pick(POSITIONS[scene.position][1], rng),
        "b": _pick(BACKGROUNDS[scene.background], rng),
    }
    first = next(part for part in template.split("{")[1:] if not part.startswith("a}"))[0]
    words["a"] = "an" if words[first][0] in "aeiou" else "a"
    return template.format(**words)


def describe_partially(scene: Scene, rng: np.random.Generator) -> str:
    """A caption that names one attribute only, as lazy alt-text does ("red", "a star", "striped")."""
    kind = rng.integers(4)
    if kind == 0:
        return _pick(COLOURS[scene.colour][1], rng)
    if kind == 1:
        return f"a {_pick(SHAPES[scene.shape], rng)}"
    if kind == 2:
        return f"something {_pick(SIZES[scene.size][1], rng)}"
    return _pick(BACKGROUNDS[scene.background], rng).split(" ", 1)[1]


def junk(rng: np.random.Generator) -> str:
    """File names and boilerplate that say nothing about the image."""
    template = _pick(JUNK, rng)
    return template.format(n4=rng.integers(1000, 10000), n5=rng.integers(10000, 100000))


def _pick(options, rng: np.random.Generator):
    return options[rng.integers(len(options))]
