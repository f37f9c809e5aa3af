"""Online JEST inside the training loop: the paper's setting with a cached reference.

Each step the model being trained embeds a super-batch without gradient, the reference's embeddings come
with the batch (each sample brought its own from the worker that decoded it: reference.py), and the
selection core keeps b of B. Nothing here syncs with the host: the scores it logs stay on the device until
the trainer's log step reads them (`Window.report`).
"""

from __future__ import annotations

import time
from collections import Counter

import torch

from curate import jest
from curate.jest import Choice, PairEmbeddings
from curate.models import ImageTextModel
from curate.runtime import autocast
from curate.train.batch import Batch
from curate.train.config import OnlineJestConfig


@torch.no_grad()
def choose(
    model: ImageTextModel,
    reference: PairEmbeddings,
    batch: Batch,
    config: OnlineJestConfig,
    generator: torch.Generator,
    precision: str,
) -> Choice:
    """Keep b of the super-batch `batch` (on the training device), given the reference's embeddings of its
    pairs in its order (`reference`); the rows stay on the device too. With `config.score_resolution` the
    learner embeds it at that size (Flexi-JEST): fewer image tokens for the same choice of keys, the
    reference's cached embeddings unchanged."""
    with autocast(precision, batch.images.device):
        images, texts = model.encode(batch.images, batch.tokens, config.score_resolution)
    # The 0-d parameters keep t and b on the device: reading them as floats would sync every step.
    learner = PairEmbeddings(images, texts, model.module.logit_scale.exp(), _bias(model))
    # One generator for both draws: online JEST re-seeds it every step, so the random comparison batch
    # (drawn after the selection) cannot perturb any later step.
    return jest.choose(
        "jest", reference, learner, config.criterion, config.ratio, config.chunks, config.temperature,
        generator, generator, false_negatives=config.mask_threshold,
    )  # fmt: skip


def _bias(model: ImageTextModel) -> torch.Tensor | float:
    bias = getattr(model.module, "logit_bias", None)
    return bias if bias is not None else 0.0


class Window:
    """Per-log-window statistics of online JEST and the time split, kept on the device until read."""

    def __init__(self) -> None:
        self._phase, self._since = None, 0.0
        self.reset()

    def reset(self) -> None:
        self.selected: list[torch.Tensor] = []
        self.random: list[torch.Tensor] = []
        self.masked: list[torch.Tensor] = []  # --false-negatives: selected then random share, per step
        self.seconds: Counter = Counter()

    def start(self, phase: str) -> None:
        self.stop()
        self._phase, self._since = phase, time.perf_counter()

    def stop(self) -> None:
        # On CUDA this times launches, not kernels, unless something synced; the log step's sync bounds it.
        if self._phase:
            self.seconds[self._phase] += time.perf_counter() - self._since
            self._phase = None

    def add(self, choice: Choice) -> None:
        self.selected.append(choice.selected_score)
        self.random.append(choice.random_score)
        if choice.selected_masked is not None:
            self.masked.append(torch.stack([choice.selected_masked, choice.random_masked]))

    def report(self) -> dict:
        """The window's LogRecord fields (selected_learnability, random_learnability, the masked shares,
        time_share), then a fresh window."""
        out: dict = {}
        if self.selected:
            out["selected_learnability"] = float(torch.stack(self.selected).mean())
            out["random_learnability"] = float(torch.stack(self.random).mean())
        if self.masked:
            selected, random = torch.stack(self.masked).mean(0).tolist()
            out["selected_masked_share"], out["random_masked_share"] = selected, random
        total = sum(self.seconds.values())
        if total and "score" in self.seconds:
            out["time_share"] = {k: v / total for k, v in sorted(self.seconds.items())}
        self.reset()
        return out
