"""Device and precision choices shared by every command that runs a model."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from curate.errors import CurateError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` is CUDA when present, else the CPU; asking for CUDA without one is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CurateError(f"--device {device}: no CUDA GPU is visible to torch")
    try:
        return torch.device(device)
    except RuntimeError:
        raise CurateError(f"--device must be auto, cpu or cuda[:N], got {device!r}") from None


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` is bf16 autocast on CUDA and fp32 on the CPU (where bf16 matmuls are slower, not faster)."""
    if precision not in PRECISIONS:
        raise CurateError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# progress(done, total): total is None while unknown. The CLI passes a rich bar's update (which also
# takes a third, optional status text); the library never imports rich.
Progress = Callable[[int, int | None], None]
StatusProgress = Callable[[int, int | None, str], None]
