"""The one place that creates open_clip models and tokenizers (`--model`, `--pretrained`)."""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from curate import __version__
from curate.errors import CurateError, first_line
from curate.models.builtin import BUILTINS, register_builtins
from curate.models.checkpoint import load_checkpoint
from curate.models.resolution import LowResolution, check_resolution

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


@dataclass
class ImageTextModel:
    """An open_clip model with its preprocessing and tokenizer, returning L2-normalised embeddings."""

    module: torch.nn.Module
    preprocess: Callable  # PIL image -> float tensor (C, H, W), the model's own eval transform
    tokenizer: Callable  # list[str] -> long tensor (N, context_length)
    name: str  # what the user asked for: a built-in, an open_clip name or a checkpoint path
    pretrained: str  # tag or weights path; "" when the weights came with the checkpoint or are random
    open_clip_name: str
    config: dict  # the open_clip model config, saved inside every checkpoint
    # Loaded from a checkpoint: its absolute path and, for one of curate train, the steps it had trained.
    # Score files record both, so a learner's cost can follow them back to the run that made the model.
    checkpoint: str = ""
    checkpoint_step: int | None = None
    _forward_flops: dict[int, float] = field(default_factory=dict, repr=False)  # image size -> FLOPs
    _fingerprint: str | None = field(default=None, repr=False)
    _low_resolution: LowResolution | None = field(default=None, repr=False)
    _forward: PairForward | None = field(default=None, repr=False)

    @property
    def image_size(self) -> int:
        size = self.module.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def patch_size(self) -> int | None:
        """The ViT image tower's patch side in pixels; None for a tower without patches."""
        patch = getattr(self.module.visual, "patch_size", None)
        return int(patch[0] if isinstance(patch, (tuple, list)) else patch) if patch else None

    @property
    def embed_dim(self) -> int:
        return int(self.config["embed_dim"])

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def training(self) -> bool:
        return self.module.training

    def train(self, mode: bool = True) -> None:
        """Training mode (or, with False, eval mode) for the whole model."""
        self.module.train(mode)

    def named_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        return self.module.named_parameters()

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.module.parameters()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)

    def pair_logits(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(t, b) as 0-d tensors on the device (b None for a model without a bias): reading them as floats
        would sync every step."""
        return self.module.logit_scale.exp(), getattr(self.module, "logit_bias", None)

    def training_forward(self) -> PairForward:
        """The one forward a training step runs (both towers, t and b): the module DDP wraps."""
        if self._forward is None:
            self._forward = PairForward(self)
        return self._forward

    @property
    def logit_scale(self) -> float:
        return float(self.module.logit_scale.detach().exp())  # t, not log t

    @property
    def logit_bias(self) -> float:
        bias = getattr(self.module, "logit_bias", None)
        return float(bias.detach()) if bias is not None else 0.0

    def encode(
        self, images: torch.Tensor, tokens: torch.Tensor, resolution: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_images(images, resolution), self.encode_texts(tokens)

    # Normalised in fp32 whatever autocast produced: unit norm must hold before the float16 round trip.
    def encode_images(self, images: torch.Tensor, resolution: int | None = None) -> torch.Tensor:
        """`resolution`: encode on a smaller token grid (Flexi-JEST; ViTs only, see resolution.py);
        None or the model's own size is open_clip's forward, unchanged."""
        if resolution is None or (resolution == self.image_size and images.shape[-1] == resolution):
            return F.normalize(self.module.encode_image(images).float(), dim=-1)
        if self._low_resolution is None:
            self._low_resolution = LowResolution(self.module, self.name)
        return F.normalize(self._low_resolution.encode(images, resolution).float(), dim=-1)

    def check_resolution(self, resolution: int, option: str = "--resolution") -> int:
        """`resolution` if this model can encode images at it, else a one-line error naming the model."""
        return check_resolution(self.module, self.name, resolution, option)

    def preprocess_at(self, resolution: int) -> Callable:
        """The model's own eval transform (resize, crop, normalise), but to `resolution` pixels."""
        import open_clip

        self.check_resolution(resolution)
        if resolution == self.image_size:
            return self.preprocess
        cfg = open_clip.get_model_preprocess_cfg(self.module)
        return open_clip.image_transform(
            resolution,
            is_train=False,
            mean=cfg.get("mean"),
            std=cfg.get("std"),
            resize_mode=cfg.get("resize_mode"),
            interpolation=cfg.get("interpolation"),
        )

    def encode_texts(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.module.encode_text(tokens).float(), dim=-1)

    def metadata(self) -> dict[str, str]:
        """What a score file records, so selection can rebuild pair losses without the model."""
        return {
            "curate.model": self.name,
            "curate.pretrained": self.pretrained,
            "curate.logit_scale": repr(self.logit_scale),
            "curate.logit_bias": repr(self.logit_bias),
            "curate.embed_dim": str(self.embed_dim),
            "curate.image_size": str(self.image_size),
            "curate.version": __version__,
            "curate.checkpoint": self.checkpoint,
            "curate.checkpoint_step": "" if self.checkpoint_step is None else str(self.checkpoint_step),
            "curate.weights": self.weights_fingerprint(),
        }

    def weights_fingerprint(self) -> str:
        """sha256 of every tensor of the state dict (name, dtype, shape and bytes), computed once: what
        tells two models apart when their path or name is the same (a checkpoint replaced in place).
        A model is fingerprinted before it is used, so a model trained after that must not ask again."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for name, tensor in sorted(self.module.state_dict().items()):
                digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                digest.update(tensor.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def forward_flops(self, resolution: int | None = None) -> float:
        """FLOPs of one sample through both towers at the model's image size, or at `resolution` (counted
        once per size). Training counts 3× this per trained sample (forward and backward), scoring 1×:
        the one unit every cost in curate is counted in."""
        size = resolution or self.image_size
        if size not in self._forward_flops:
            images, tokens = self._probe(size)
            self._forward_flops[size] = self._count(lambda: self.encode(images, tokens, size))
        return self._forward_flops[size]

    def image_flops(self, resolution: int | None = None) -> float:
        """FLOPs of one image through the image tower alone (what a lower resolution makes cheaper)."""
        size = resolution or self.image_size
        images, _ = self._probe(size)
        return self._count(lambda: self.encode_images(images, size))

    def _probe(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.module.parameters()).device
        return torch.zeros(2, 3, size, size, device=device), self.tokenizer(["a photo", "a photo"]).to(device)

    @staticmethod
    def _count(forward: Callable[[], object]) -> float:
        """FLOPs per sample of `forward` (on a batch of two), counted by torch's FlopCounterMode.

        Without gradient, nn.MultiheadAttention takes a fused fast path and SDPA a fused kernel, and the
        counter sees neither (a siglip-tiny forward counted 68 of its 113 MFLOPs): count the plain-matmul
        path, the FLOPs the hardware does either way."""
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.utils.flop_counter import FlopCounterMode

        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
                forward()
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
        return counter.get_total_flops() / 2


class PairForward(torch.nn.Module):
    """Both towers and the logit parameters in one `forward`, so that DDP can wrap it: DDP reduces the
    gradients of the parameters its wrapped module's forward used, so a step must run through it.

    `split` (Flexi-JEST's --multi-resolution): (full, low) index tensors; images[full] are encoded at the
    model's own size and images[low] at `resolution`, and the features come back in the order full + low,
    the texts gathered the same way, so pair i is still image i with caption i."""

    def __init__(self, model: ImageTextModel):
        super().__init__()
        self.clip = model.module  # registered: the parameters DDP sees are the model's own
        self._model = [model]  # not a submodule: its encode methods, around the same module

    def forward(
        self,
        images: torch.Tensor,
        tokens: torch.Tensor,
        split: tuple[torch.Tensor, torch.Tensor] | None = None,
        resolution: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        model = self._model[0]
        if split is None:
            image_features, text_features = model.encode(images, tokens)
        else:
            full, low = split
            image_features = torch.cat(
                [model.encode_images(images[full]), model.encode_images(images[low], resolution)]
            )
            text_features = model.encode_texts(tokens[torch.cat([full, low])])
        return (image_features, text_features, *model.pair_logits())


def load_model(
    name: str,
    pretrained: str | None = None,
    device: torch.device | str = "cpu",
    allow_random_init: bool = False,
    seed: int = 0,
) -> ImageTextModel:
    """Resolve `--model NAME [--pretrained TAG|PATH]` to a model in eval mode on `device`.

    NAME is a checkpoint path (written by `curate train`), a built-in (`siglip-tiny`, `siglip-small`) or
    an open_clip model name. A model with no weights is refused unless `allow_random_init`: a random
    reference silently scoring a crawl is the worst failure this tool could have. Random weights are
    drawn from `seed` (on a forked RNG, so the caller's global RNG is untouched): every process that
    builds the same model gets the same weights, and two runs of one command agree.
    """
    register_builtins()
    if Path(name).suffix in CHECKPOINT_SUFFIXES or Path(name).is_file():
        model = _from_checkpoint(name)
    else:
        open_clip_name = BUILTINS[name].open_clip_name if name in BUILTINS else _known_open_clip_name(name)
        if not pretrained and not allow_random_init:
            raise CurateError(
                f"--model {name} has no weights: pass --pretrained TAG or a weights file, a checkpoint path, "
                "or --allow-random-init (for tests and benchmarks only)"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _create(name, open_clip_name, pretrained or None)
    model.module.to(device).eval()
    return model


def _from_checkpoint(path: str) -> ImageTextModel:
    payload = load_checkpoint(path)
    if "model_name" not in payload:
        raise CurateError(
            f"{path} holds open_clip weights without an architecture: pass --model ARCH --pretrained {path}"
        )
    open_clip_name = payload["model_name"]
    _ensure_registered(open_clip_name, payload["model_config"])
    model = _create(path, open_clip_name, None)
    try:
        model.module.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        raise CurateError(f"{path}: weights do not fit {open_clip_name}: {first_line(error)}") from None
    model.checkpoint = str(Path(path).resolve())
    step = payload.get("step")
    model.checkpoint_step = int(step) if isinstance(step, int) else None
    return model


def _create(name: str, open_clip_name: str, pretrained: str | None) -> ImageTextModel:
    import open_clip

    if pretrained and not Path(pretrained).is_file():
        tags = open_clip.list_pretrained_tags_by_model(open_clip_name)
        if pretrained not in tags:
            known = ", ".join(tags) if tags else "none"
            raise CurateError(
                f"--pretrained {pretrained}: not a file, nor a tag open_clip knows for {open_clip_name} "
                f"(tags: {known})"
            )
    try:
        with _quiet_open_clip():
            module, _, preprocess = open_clip.create_model_and_transforms(
                open_clip_name, pretrained=pretrained
            )
            tokenizer = open_clip.get_tokenizer(open_clip_name)
    except RuntimeError as error:
        if "download" in str(error).lower():
            raise CurateError(
                f"could not fetch the pretrained weights '{pretrained}' of {open_clip_name} (no network?); "
                "fetch them on a connected machine (open_clip caches them under ~/.cache/huggingface) or "
                "pass "
                "--pretrained /path/to/open_clip_model.safetensors"
            ) from None
        raise CurateError(f"cannot create {open_clip_name}: {first_line(error)}") from None
    except ImportError as error:
        raise CurateError(f"{open_clip_name} needs an extra package: {error}") from None
    config = open_clip.get_model_config(open_clip_name)
    return ImageTextModel(
        module=module,
        preprocess=preprocess,
        tokenizer=tokenizer,
        name=name,
        pretrained=pretrained or "",
        open_clip_name=open_clip_name,
        config=config,
    )


def _known_open_clip_name(name: str) -> str:
    import open_clip

    names = open_clip.list_models()
    if name in names:
        return name
    close = difflib.get_close_matches(name, [*BUILTINS, *names], n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else "; `curate models` lists them"
    raise CurateError(
        f"unknown model {name!r}: not a checkpoint file, a built-in or an open_clip model{hint}"
    )


def _ensure_registered(open_clip_name: str, config: dict) -> None:
    import open_clip

    if open_clip.get_model_config(open_clip_name) == config:
        return
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / f"{open_clip_name}.json").write_text(json.dumps(config))
        open_clip.add_model_config(folder)


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """open_clip logs failures on the root logger before raising; we turn them into one line ourselves."""
    previous = logging.root.manager.disable  # the caller's own setting, restored after
    logging.disable(max(previous, logging.ERROR))
    try:
        yield
    finally:
        logging.disable(previous)
