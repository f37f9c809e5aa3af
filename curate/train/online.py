"""Online JEST inside the training loop: the paper's setting with a cached reference.

Each step the model being trained embeds a super-batch without gradient, the reference's embeddings come
with the batch (each sample brought its own from the worker that decoded it: reference.py), and the
selection core keeps b of B. Nothing here syncs with the host: the scores it logs stay on the device until
the trainer's log step reads them (`Window.report`).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import torch

from curate import jest
from curate.distributed import Group
from curate.errors import CurateError
from curate.jest import Choice, PairEmbeddings
from curate.models import ImageTextModel
from curate.runtime import autocast
from curate.seeds import choice_seed, local_choice_seed
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
    return _choose(_learner(model, batch, config, precision), reference, config, generator)


@torch.no_grad()
def _learner(model: ImageTextModel, batch: Batch, config: OnlineJestConfig, precision: str) -> PairEmbeddings:
    with autocast(precision, batch.images.device):
        images, texts = model.encode(batch.images, batch.tokens, config.score_resolution)
    # The 0-d parameters keep t and b on the device: reading them as floats would sync every step.
    scale, bias = model.pair_logits()
    return PairEmbeddings(images, texts, scale, bias if bias is not None else 0.0)


def _choose(
    learner: PairEmbeddings, reference: PairEmbeddings, config: OnlineJestConfig, generator: torch.Generator
) -> Choice:
    # One generator for both draws: online JEST re-seeds it every step, so the random comparison batch
    # (drawn after the selection) cannot perturb any later step.
    return jest.choose(
        "jest", reference, learner, config.criterion, config.ratio, config.chunks, config.temperature,
        generator, generator, false_negatives=config.mask_threshold,
    )  # fmt: skip


@dataclass
class Chosen:
    """What a rank trains at one step of online JEST, and what its choice scored."""

    images: torch.Tensor
    tokens: torch.Tensor
    keys: list[str]  # the keys of `rows` (or, with rows None, of images and tokens)
    rows: torch.Tensor | None  # on the device: rows of `keys` chosen, resolved at the log step's sync
    choice: Choice
    moved: int | None = None  # global scope over several ranks: the chosen pairs that changed rank


class OnlineJest:
    """Online JEST over a job's ranks. Each rank holds B/W of the super-batch.

    Global scope (the paper's, and the only one with one process): the learner's embeddings and the
    reference's are gathered, every rank runs the same choice with the same generator (so every rank holds
    the same b of B), and the chosen pairs reach the rank that trains them by a balanced assignment: a rank
    keeps up to b/W of the chosen pairs it already holds, and the surplus goes to the ranks short of b/W.
    Traffic per step: a gather of 2·B·D learner and 2·B·D reference values, the super-batch's keys over
    the host group, and the surplus pairs (image and tokens) point to point.

    Local scope: each rank keeps b/W of its own B/W, seeded per rank; nothing crosses ranks, and the
    chosen batch's cross terms between ranks never enter the choice.
    """

    def __init__(self, config: OnlineJestConfig, scale: float, bias: float, seed: int, group: Group):
        self.config, self.scale, self.bias, self.seed, self.group = config, scale, bias, seed, group
        self.global_scope = config.scope == "global" or group.ranks.world_size == 1
        self._fingerprint = 0  # of the global choices so far: every rank must have the same

    @torch.no_grad()
    def __call__(self, model: ImageTextModel, batch: Batch, step: int, precision: str, window) -> Chosen:
        ranks, group = self.group.ranks, self.group
        device = batch.images.device
        learner = _learner(model, batch, self.config, precision)
        reference = PairEmbeddings(*batch.reference, self.scale, self.bias)
        if not self.global_scope:
            generator = torch.Generator(device=device).manual_seed(
                local_choice_seed(self.seed, step, ranks.rank)
            )
            choice = _choose(learner, reference, self.config, generator)
            rows = choice.selection.indices
            return Chosen(batch.images[rows], batch.tokens[rows], batch.keys, rows, choice)
        if ranks.world_size > 1:
            learner = _gathered(group, learner)
            reference = _gathered(group, reference)
        generator = torch.Generator(device=device).manual_seed(choice_seed(self.seed, step))
        choice = _choose(learner, reference, self.config, generator)
        rows = choice.selection.indices
        if ranks.world_size == 1:
            return Chosen(batch.images[rows], batch.tokens[rows], batch.keys, rows, choice)
        window.start("exchange")
        keys = [key for part in group.gather_objects(batch.keys) for key in part]
        chosen = rows.tolist()  # the one host sync of a step of the global scope: it sizes the exchange
        self._fingerprint = hash((self._fingerprint, tuple(chosen)))
        plan = balanced_assignment(chosen, len(batch.keys), ranks.world_size)
        images, tokens = _exchange(group, plan, batch)
        trained = [keys[i] for i in plan[ranks.rank].rows]
        moved = sum(len(p.rows) - len(p.kept) for p in plan)
        return Chosen(images, tokens, trained, None, choice, moved)

    def check_agreement(self) -> None:
        """Whether every rank made the same global choices so far (a nondeterministic kernel would make
        the ranks train batches that were never chosen together); one line if not."""
        if self.global_scope and self.group.ranks.world_size > 1:
            fingerprints = self.group.gather_objects(self._fingerprint)
            if len(set(fingerprints)) > 1:
                raise CurateError(
                    "online JEST: the ranks chose different batches from the same super-batch (a "
                    "nondeterministic kernel?); --online-scope local makes each rank choose its own"
                )


def _gathered(group: Group, pairs: PairEmbeddings) -> PairEmbeddings:
    image, text = group.gather(pairs.image), group.gather(pairs.text)
    return PairEmbeddings(image, text, pairs.logit_scale, pairs.logit_bias)


@dataclass
class Assignment:
    """What one rank trains after a global choice: `rows` (indices into the super-batch, in training
    order), of which `kept` it already holds; `sends[r]` are its own local rows that rank r trains."""

    rows: list[int]
    kept: list[int]  # local rows
    receives: list[int]  # count from each rank
    sends: list[list[int]]  # local rows, to each rank


def balanced_assignment(chosen: list[int], per_rank: int, world_size: int) -> list[Assignment]:
    """Who trains which of the `chosen` rows of a super-batch held `per_rank` rows a rank: each rank keeps
    up to b/W of the chosen rows it holds, in the order chosen; the surplus, in rank order, fills the ranks
    short of b/W, in rank order. Every rank computes the same assignment from the same choice."""
    share = len(chosen) // world_size
    own: list[list[int]] = [[] for _ in range(world_size)]
    for row in chosen:
        own[row // per_rank].append(row)
    surplus = [row for rows in own for row in rows[share:]]
    plans, at = [], 0
    for rank in range(world_size):
        kept = own[rank][:share]
        extra = surplus[at : at + share - len(kept)]
        at += len(extra)
        receives = [0] * world_size
        for row in extra:
            receives[row // per_rank] += 1
        plans.append(Assignment(kept + extra, [r - rank * per_rank for r in kept], receives, []))
    for source in range(world_size):
        plans[source].sends = [
            [
                row - source * per_rank
                for row in plans[target].rows[len(plans[target].kept) :]
                if row // per_rank == source
            ]
            for target in range(world_size)
        ]
    return plans


def _exchange(group: Group, plans: list[Assignment], batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's chosen images and tokens: the rows it keeps, then those the other ranks send (each in one
    message of the row's bytes, so images and tokens travel together)."""
    me = group.ranks.rank
    plan = plans[me]
    # Images cross as float16, as they came from the cache or the stream (widened exactly on the device).
    images, tokens = batch.images.half(), batch.tokens
    width = images[0].numel() * images.element_size() + tokens[0].numel() * tokens.element_size()

    def packed(rows: list[int]) -> torch.Tensor:
        index = torch.tensor(rows, dtype=torch.long, device=images.device)
        return torch.cat(
            [
                images[index].reshape(len(rows), -1).view(torch.uint8),
                tokens[index].reshape(len(rows), -1).view(torch.uint8),
            ],
            dim=1,
        )

    outgoing = [
        packed(rows) if rows and target != me else _empty(width, images.device)
        for target, rows in enumerate(plan.sends)
    ]
    incoming = [
        torch.empty(count, width, dtype=torch.uint8, device=images.device)
        if source != me
        else _empty(width, images.device)
        for source, count in enumerate(plan.receives)
    ]
    group.exchange(outgoing, incoming)
    received = torch.cat([packed(plan.kept) if plan.kept else _empty(width, images.device), *incoming])
    split = images[0].numel() * images.element_size()
    out_images = received[:, :split].contiguous().view(images.dtype).reshape(len(received), *images.shape[1:])
    out_images = out_images.to(batch.images.dtype)
    out_tokens = received[:, split:].contiguous().view(tokens.dtype).reshape(len(received), *tokens.shape[1:])
    return out_images, out_tokens


def _empty(width: int, device: torch.device) -> torch.Tensor:
    return torch.zeros(0, width, dtype=torch.uint8, device=device)


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
        self.moved: list[int] = []  # global scope over several ranks: chosen pairs sent to another rank

    def start(self, phase: str) -> None:
        self.stop()
        self._phase, self._since = phase, time.perf_counter()

    def stop(self) -> None:
        # On CUDA this times launches, not kernels, unless something synced; the log step's sync bounds it.
        if self._phase:
            self.seconds[self._phase] += time.perf_counter() - self._since
            self._phase = None

    def add(self, chosen: Chosen) -> None:
        choice = chosen.choice
        if chosen.moved is not None:
            self.moved.append(chosen.moved)
        self.selected.append(choice.selected_score)
        self.random.append(choice.random_score)
        if choice.selected_masked is not None:
            self.masked.append(torch.stack([choice.selected_masked, choice.random_masked]))

    def report(self, group: Group) -> dict:
        """The window's LogRecord fields (selected_learnability, random_learnability, the masked shares,
        time_share), then a fresh window. The scores are means over the ranks too (under the local scope
        each rank chose its own batch; under the global one they are the same on every rank)."""
        out: dict = {}
        if self.selected:
            scores = group.mean(
                torch.stack([torch.stack(self.selected).mean(), torch.stack(self.random).mean()])
            )
            out["selected_learnability"], out["random_learnability"] = scores.tolist()
        if self.masked:
            selected, random = group.mean(torch.stack(self.masked).mean(0)).tolist()
            out["selected_masked_share"], out["random_masked_share"] = selected, random
        if self.moved:
            out["exchanged_pairs"] = sum(self.moved) / len(self.moved)
        total = sum(self.seconds.values())
        if total and "score" in self.seconds:
            out["time_share"] = {k: v / total for k, v in sorted(self.seconds.items())}
        self.reset()
        return out
