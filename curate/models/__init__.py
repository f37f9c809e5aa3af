"""Models: built-in small SigLIP configs, open_clip names with pretrained tags, and checkpoints."""

from curate.models.builtin import BUILTINS
from curate.models.checkpoint import load_checkpoint, save_checkpoint
from curate.models.loading import ImageTextModel, load_model

__all__ = ["BUILTINS", "ImageTextModel", "load_checkpoint", "load_model", "save_checkpoint"]
