"""Flexi-JEST's low-resolution image encoding for open_clip ViTs: fewer tokens for the same model.

The image is resized to R×R before the patch embedding, and the position embeddings are interpolated
(bicubic, as open_clip itself does when it loads a checkpoint at another size) from the model's grid to
R/p × R/p. We chose this over FlexiViT's PI-resize of the patch embedding (same token count at the full
image size) because it needs nothing but the position grid: the patch embedding, every weight and
open_clip's own forward stay as they are, the smaller input also means less to decode and copy, and at the
model's own size nothing at all changes, so the full-resolution path is open_clip's forward exactly.

The interpolated grid is cached per (size, device, dtype) and re-made only when the position embedding
changes (its version counter moves at every optimizer step), so scoring pays for it once. Under autograd
it is always made afresh: the gradient of a low-resolution batch flows back to the full grid.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from curate.errors import CurateError


def vit_tower(module: torch.nn.Module, model_name: str, asked: str = "") -> torch.nn.Module:
    """The image tower of `module` if it is an open_clip ViT with a class token, else a one-line error
    (after `asked`, the setting that needed one, when given)."""
    visual = getattr(module, "visual", None)
    grid = getattr(visual, "grid_size", None)
    position = getattr(visual, "positional_embedding", None)
    if (
        grid is None
        or position is None
        or not hasattr(visual, "conv1")
        or position.shape[0] != grid[0] * grid[1] + 1
    ):
        raise CurateError(
            f"{asked}{model_name}: its image tower is not an open_clip ViT (with a class token and a "
            "position grid), so it cannot encode at another resolution"
        )
    return visual


def check_resolution(
    module: torch.nn.Module, model_name: str, resolution: int, option: str = "--resolution"
) -> int:
    """`resolution` if the model's ViT can encode at it (a multiple of the patch size, at most its own
    size), else a one-line error naming `option`, the setting it came from."""
    visual = vit_tower(module, model_name, f"{option} {resolution}: ")
    patch, size = visual.patch_size[0], visual.image_size[0]
    if resolution % patch or not patch <= resolution <= size:
        raise CurateError(
            f"{option} {resolution}: {model_name} needs a multiple of its patch size {patch} between "
            f"{patch} and its image size {size}"
        )
    return resolution


class LowResolution:
    """Encodes images of one model's ViT at other sizes; one per model (it holds the cache)."""

    def __init__(self, module: torch.nn.Module, model_name: str):
        self.module, self.model_name = module, model_name
        self._cache: dict[tuple, tuple[int, torch.Tensor]] = {}

    def encode(self, images: torch.Tensor, resolution: int) -> torch.Tensor:
        """The image tower's (unnormalised) output for `images` (N, 3, H, W) resized to `resolution`."""
        visual = vit_tower(self.module, self.model_name)
        if resolution == visual.image_size[0] and images.shape[-1] == resolution:
            return self.module.encode_image(images)
        check_resolution(self.module, self.model_name, resolution)
        if images.shape[-2:] != (resolution, resolution):
            images = F.interpolate(
                images, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False
            )
        with _position_grid(visual, self.positions(resolution)):
            return self.module.encode_image(images)

    def positions(self, resolution: int) -> torch.Tensor:
        """The position embeddings for a `resolution` input: the class token's, then the resized grid."""
        visual = vit_tower(self.module, self.model_name)
        table = visual.positional_embedding
        grid = resolution // visual.patch_size[0]
        if torch.is_grad_enabled() and table.requires_grad:
            return _interpolate(table, grid)
        key = (grid, table.device, table.dtype)
        cached = self._cache.get(key)
        if cached is None or cached[0] != table._version:
            with torch.no_grad():
                cached = (table._version, _interpolate(table, grid))
            self._cache[key] = cached
        return cached[1]


def _interpolate(table: torch.Tensor, grid: int) -> torch.Tensor:
    token, cells = table[:1], table[1:]
    side = math.isqrt(cells.shape[0])
    image = cells.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    image = F.interpolate(image, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False)
    cells = image.permute(0, 2, 3, 1).reshape(grid * grid, -1).to(table.dtype)
    return torch.cat([token, cells])


@contextlib.contextmanager
def _position_grid(visual: torch.nn.Module, positions: torch.Tensor) -> Iterator[None]:
    """Let open_clip's own forward read `positions` as the position embedding while the block runs.

    Swapped in the module's parameter table (not assigned: an nn.Parameter slot refuses a computed
    tensor, and the computed one must stay in the autograd graph of the full grid).
    """
    table = visual._parameters
    original = table["positional_embedding"]
    table["positional_embedding"] = positions
    try:
        yield
    finally:
        table["positional_embedding"] = original
