"""Render one compositional scene (shape × colour × size × position × background) to encoded bytes."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from curate.synth.vocabulary import BACKGROUND_TONES, COLOURS, POSITIONS, SIZES

SUPERSAMPLE = 4  # draw large, then downsample: anti-aliased edges keep tiny shapes recognisable


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    size: str
    position: str
    background: str
    tone: int  # index into BACKGROUND_TONES
    dx: float  # jitter of the centre, in fractions of the image side
    dy: float
    angle: float  # rotation in degrees
    texture_seed: int  # drives the grainy background, so rendering needs no outside randomness


def render(scene: Scene, image_size: int, image_format: str = "jpg", quality: int = 90) -> bytes:
    side = image_size * SUPERSAMPLE
    canvas = Image.fromarray(_background(scene, side))
    draw = ImageDraw.Draw(canvas)
    (cx, cy), _ = POSITIONS[scene.position]
    radius = SIZES[scene.size][0] * side
    centre = ((cx + scene.dx) * side, (cy + scene.dy) * side)
    colour = COLOURS[scene.colour][0]
    _draw_shape(draw, scene.shape, centre, radius, scene.angle, colour)
    image = canvas.resize((image_size, image_size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    if image_format == "jpg":
        image.save(buffer, format="JPEG", quality=quality)
    elif image_format == "png":
        image.save(buffer, format="PNG")
    elif image_format == "webp":
        image.save(buffer, format="WEBP", quality=quality)
    else:
        raise ValueError(f"unknown image format {image_format!r}")
    return buffer.getvalue()


def _background(scene: Scene, side: int) -> np.ndarray:
    tone = np.array(BACKGROUND_TONES[scene.tone], dtype=np.float32)
    y, x = np.mgrid[0:side, 0:side]
    period = side // 8
    if scene.background == "plain":
        pattern = np.zeros((side, side), np.float32)
    elif scene.background == "stripes":
        pattern = ((x + y) // (period // 2) % 2).astype(np.float32)
    elif scene.background == "dots":
        pattern = ((x % period) - period / 2) ** 2 + ((y % period) - period / 2) ** 2 < (period / 5) ** 2
        pattern = pattern.astype(np.float32)
    elif scene.background == "checker":
        pattern = ((x // period + y // period) % 2).astype(np.float32)
    elif scene.background == "grid":
        pattern = ((x % period < side // 64 + 1) | (y % period < side // 64 + 1)).astype(np.float32)
    elif scene.background == "noise":
        rng = np.random.default_rng(scene.texture_seed)
        coarse = rng.random((side // SUPERSAMPLE, side // SUPERSAMPLE), dtype=np.float32)
        pattern = np.kron(coarse, np.ones((SUPERSAMPLE, SUPERSAMPLE), np.float32))
    else:
        raise ValueError(f"unknown background {scene.background!r}")
    # Lighten dark tones and darken light ones, so the texture is visible but never louder than the shape.
    direction = 1.0 if tone.mean() < 128 else -1.0
    image = tone[None, None, :] + direction * 45.0 * pattern[..., None]
    return np.clip(image, 0, 255).astype(np.uint8)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, centre, radius: float, angle: float, colour) -> None:
    cx, cy = centre
    if shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
    elif shape == "ring":
        draw.ellipse(
            (cx - radius, cy - radius, cx + radius, cy + radius),
            outline=colour,
            width=max(2, int(radius * 0.4)),
        )
    elif shape == "square":
        draw.polygon(_regular(centre, radius * 0.95, 4, angle + 45), fill=colour)
    elif shape == "diamond":
        draw.polygon(_regular(centre, radius, 4, angle), fill=colour)
    elif shape == "triangle":
        draw.polygon(_regular(centre, radius, 3, angle - 90), fill=colour)
    elif shape == "hexagon":
        draw.polygon(_regular(centre, radius, 6, angle), fill=colour)
    elif shape == "star":
        draw.polygon(_star(centre, radius, angle - 90), fill=colour)
    elif shape == "cross":
        arm = radius * 0.35
        for box in (
            (cx - radius, cy - arm, cx + radius, cy + arm),
            (cx - arm, cy - radius, cx + arm, cy + radius),
        ):
            draw.rectangle(box, fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _regular(centre, radius: float, sides: int, angle: float) -> list[tuple[float, float]]:
    cx, cy = centre
    return [
        (
            cx + radius * math.cos(math.radians(angle + 360 * k / sides)),
            cy + radius * math.sin(math.radians(angle + 360 * k / sides)),
        )
        for k in range(sides)
    ]


def _star(centre, radius: float, angle: float) -> list[tuple[float, float]]:
    cx, cy = centre
    points = []
    for k in range(10):
        r = radius if k % 2 == 0 else radius * 0.45
        theta = math.radians(angle + 36 * k)
        points.append((cx + r * math.cos(theta), cy + r * math.sin(theta)))
    return points
