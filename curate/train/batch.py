"""What one training step reads: the pairs, their keys and, under online JEST, the reference's embeddings of
each pair (they travel with the sample from the worker that decoded it, so no process holds all of them)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    images: torch.Tensor  # (n, C, H, W) preprocessed, float16 (normalised pixels are well in its range)
    tokens: torch.Tensor  # (n, context_length)
    keys: list[str]
    # online JEST: the reference's (image, text) embeddings of each pair, (n, D) float16 each
    reference: tuple[torch.Tensor, torch.Tensor] | None = None

    def head(self, n: int) -> Batch:
        """The first `n` pairs."""
        reference = None if self.reference is None else tuple(t[:n] for t in self.reference)
        return Batch(self.images[:n], self.tokens[:n], self.keys[:n], reference)

    def to(self, device: torch.device) -> Batch:
        """On the device, images as float32: float16 crosses the bus at half the bytes and is widened there
        (exactly: every float16 is a float32)."""
        images = self.images.to(device, non_blocking=True).float()
        reference = None
        if self.reference is not None:
            reference = tuple(t.to(device, non_blocking=True) for t in self.reference)
        return Batch(images, self.tokens.to(device, non_blocking=True), self.keys, reference)

    def pin_memory(self) -> Batch:
        """A copy in page-locked memory (the DataLoader calls this with pin_memory=True), so the copy to
        the GPU is asynchronous."""
        reference = None if self.reference is None else tuple(t.pin_memory() for t in self.reference)
        return Batch(self.images.pin_memory(), self.tokens.pin_memory(), self.keys, reference)
