"""The checkpoint format shared by `curate train` (writes) and every `--model path.pt` (reads).

A checkpoint is a plain dict of tensors, numbers and strings, so `torch.load(weights_only=True)` reads it:
no pickled classes ever run. The model's open_clip config travels inside it, so a checkpoint loads on a
machine that never registered that config.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import torch

from curate.errors import CurateError, first_line
from curate.fileio import atomic_open

FORMAT = "curate-checkpoint-v1"


def save_checkpoint(
    path: str | Path, model_name: str, model_config: dict, state_dict: dict, **extra: Any
) -> None:
    """Write atomically: `latest.pt` is always a complete file, even if the writer is killed."""
    payload = {
        "format": FORMAT,
        "model_name": model_name,
        "model_config": model_config,
        "state_dict": state_dict,
    }
    payload.update(extra)
    try:
        with atomic_open(str(path), "wb") as handle:
            torch.save(payload, handle)
    except RuntimeError as error:
        # torch's zip writer reports a failed write (a full disk, a file size limit) as a RuntimeError
        # ("[enforce fail at inline_container.cc...] PytorchStreamWriter failed writing file ..."), not
        # an OSError: make it the error it is.
        if "inline_container" not in str(error):
            raise
        raise OSError(
            errno.EIO, f"write failed, is the disk full? ({first_line(error)})", str(path)
        ) from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a curate checkpoint, or a plain open_clip state dict (returned as {"state_dict": ...})."""
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CurateError(f"no such checkpoint: {path}") from None
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        raise CurateError(f"cannot read checkpoint {path}: {first_line(error)}") from None
    if not isinstance(payload, dict):
        raise CurateError(f"{path} is not a model checkpoint (got {type(payload).__name__})")
    if payload.get("format") == FORMAT:
        return payload
    state = payload.get("state_dict", payload)  # open_clip's training checkpoints nest it
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CurateError(f"{path} is neither a curate checkpoint nor an open_clip state dict")
    return {"state_dict": {k.removeprefix("module."): v for k, v in state.items()}}
