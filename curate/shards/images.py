"""The one way an encoded image becomes pixels: PIL, converted to RGB (grayscale, palette, RGBA, CMYK too)."""

from __future__ import annotations

import io

from PIL import Image


def decode_rgb(data: bytes, draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode `data` into an RGB image detached from the bytes.

    `draft` lets JPEGs decode at a reduced scale no smaller than that size (1/2 to 1/8), for checks that
    only need the stream to be whole. PIL raises a zoo of types for bad data (OSError, SyntaxError,
    ValueError, DecompressionBombError, ...); callers that skip bad images catch `Exception` around this.
    """
    with Image.open(io.BytesIO(data)) as image:
        if draft is not None:
            image.draft("RGB", draft)
        return image.convert("RGB")  # convert copies, so the image outlives the file it was read from


def image_decodes(data: bytes) -> bool:
    """Whether `data` decodes to RGB; JPEGs are decoded at 1/8 scale, enough to prove the stream is whole."""
    try:
        decode_rgb(data, draft=(1, 1))
    except Exception:  # see decode_rgb: any failure means the sample is unusable
        return False
    return True
