"""Built-in small SigLIP configs for laptops, tests and the demo.

They are open_clip model configs (open_clip's own classes, its built-in BPE tokenizer, which works offline)
registered under names without "siglip": open_clip's `get_tokenizer` would otherwise switch to the
Hugging Face SigLIP tokenizer, which needs a download.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

CONFIG_FOLDER = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class BuiltinModel:
    name: str  # what users type: --model siglip-tiny
    open_clip_name: str  # the config's name inside open_clip
    summary: str


BUILTINS = {
    model.name: model
    for model in (
        BuiltinModel(
            "siglip-tiny",
            "curate-tiny",
            "32 px ViT 4×128, patch 4; text 4×128; 7.4 M params; trains on a CPU",
        ),
        BuiltinModel("siglip-small", "curate-small", "64 px ViT 6×256, patch 8; text 6×256; 22 M params"),
    )
}


@functools.cache
def register_builtins() -> None:
    import open_clip

    open_clip.add_model_config(str(CONFIG_FOLDER))
