"""The world of the synthetic crawl: attributes, their words and the caption templates.

Every attribute value has several words so that captions vary the way alt-text does, and no word is
shared between two values, so a caption is never ambiguous by accident.
"""

from __future__ import annotations

SHAPES: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "round dot"),
    "square": ("square", "box"),
    "triangle": ("triangle", "triangular shape"),
    "diamond": ("diamond", "rhombus"),
    "hexagon": ("hexagon", "six-sided shape"),
    "star": ("star", "five-pointed star"),
    "cross": ("cross", "plus sign"),
    "ring": ("ring", "hoop", "donut"),
}

COLOURS: dict[str, tuple[tuple[int, int, int], tuple[str, ...]]] = {
    "red": ((215, 35, 35), ("red", "crimson", "scarlet")),
    "orange": ((245, 135, 20), ("orange", "tangerine")),
    "yellow": ((240, 215, 35), ("yellow", "golden", "lemon")),
    "green": ((35, 165, 60), ("green", "emerald")),
    "blue": ((35, 75, 215), ("blue", "azure", "cobalt")),
    "purple": ((135, 55, 185), ("purple", "violet")),
    "pink": ((245, 125, 185), ("pink", "rose")),
    "white": ((245, 245, 245), ("white", "ivory")),
}

SIZES: dict[str, tuple[float, tuple[str, ...]]] = {
    # radius as a fraction of the image side
    "small": (0.14, ("small", "tiny", "little")),
    "medium": (0.22, ("medium-sized", "mid-sized", "medium")),
    "large": (0.32, ("large", "big", "huge")),
}

POSITIONS: dict[str, tuple[tuple[float, float], tuple[str, ...]]] = {
    "center": ((0.5, 0.5), ("in the center", "in the middle", "centered")),
    "top left": ((0.3, 0.3), ("in the top left", "in the upper left corner")),
    "top right": ((0.7, 0.3), ("in the top right", "in the upper right corner")),
    "bottom left": ((0.3, 0.7), ("in the bottom left", "in the lower left corner")),
    "bottom right": ((0.7, 0.7), ("in the bottom right", "in the lower right corner")),
}

BACKGROUNDS: dict[str, tuple[str, ...]] = {
    "plain": ("on a plain background", "against a plain backdrop"),
    "stripes": ("on a striped background", "against stripes"),
    "dots": ("on a polka-dot background", "on a dotted background"),
    "checker": ("on a checkerboard", "on a checkered background"),
    "grid": ("on a grid", "on graph paper"),
    "noise": ("on a grainy background", "on a speckled texture"),
}

# Muted tones, so that every shape colour stands out from some backgrounds more than from others.
BACKGROUND_TONES: tuple[tuple[int, int, int], ...] = (
    (128, 128, 128),
    (70, 75, 85),
    (200, 190, 165),
    (150, 170, 185),
    (40, 40, 40),
)

# {c} colour word, {s} shape word, {z} size word, {p} position phrase, {b} background phrase.
TEMPLATES: tuple[str, ...] = (
    "{a} {z} {c} {s} {p} {b}",
    "{a} {c} {s} {b}",
    "{c} {s}",
    "{a} {c} {s} {p}",
    "{z} {c} {s}, {b}",
    "there is {a} {c} {s} {p}",
    "photo of {a} {c} {s} {p} {b}",
    "a picture showing {a} {z} {c} {s}",
    "{c} {s} {p}",
    "{a} {z} {c} {s} {b}",
)

JUNK: tuple[str, ...] = (
    "IMG_{n4}.JPG",
    "DSC{n5}",
    "click here",
    "untitled",
    "image",
    "photo",
    "thumbnail",
    "stock photo {n5}",
    "download",
    "placeholder",
    "{n4}.jpg",
    "see more",
)

# Zero-shot prompts for the eval set; {c} is a class name such as "red circle".
ZEROSHOT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {c}.",
    "a {c}.",
    "a picture of a {c}.",
    "a drawing of a {c}.",
    "a {c} on a background.",
)


def class_names() -> list[str]:
    """One class per (colour, shape): `red circle` is label 0. Near misses are the point: a red circle and
    a red ring, or a red and an orange star, differ in one attribute only."""
    return [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]
