"""One super-batch of `curate select`: its samples in, its manifest rows and summary line out.

`run_partition` (select/partition.py, the unit both backends run: locally one partition after another, on
Ray one task per partition) calls `select_super_batch` for each super-batch of its partition. It is a
function of the super-batch, the config and the device type alone: its generators are seeded from (seed,
super-batch index), so the order super-batches are selected in does not change any row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from curate.jest import PairEmbeddings, choose
from curate.score.schema import ScoreFolder, ScoreMetadata
from curate.seeds import DRAW, RANDOM_BATCH, stream_seed
from curate.select.config import SelectConfig
from curate.select.manifest import MANIFEST_SCHEMA
from curate.select.window import Embeddings, SuperBatch


@dataclass
class SuperBatchResult:
    super_batch: int
    size: int
    selected: int
    shards: int
    selected_score: float  # mean A_ij over the b x b pairs of the selected batch
    random_score: float  # the same for a random batch of the same size
    # --false-negatives mask:T only: the share of the selected (random) batch's off-diagonal pairs masked
    selected_masked: float | None = None
    random_masked: float | None = None


@dataclass
class SelectedBatch:
    """What one super-batch gives the manifest: its rows in draw order and its line in the summary."""

    index: int
    size: int
    device: str
    rows: pa.Table | None = None  # None (and no result) when it is too small to keep any sample
    result: SuperBatchResult | None = None


@torch.no_grad()
def select_super_batch(
    batch: SuperBatch,
    reference: ScoreFolder,
    learner: ScoreFolder | None,
    config: SelectConfig,
    device: torch.device,
) -> SelectedBatch:
    n = len(batch)
    size = round((1.0 - config.ratio) * n)
    if size < 1:  # only the last super-batch can be this small
        return SelectedBatch(batch.index, n, str(device))
    # A short last super-batch keeps the ratio; JEST then uses at most one chunk per selected sample.
    chunks = min(config.chunks, size) if config.method == "jest" else 1
    ref = pair_embeddings(batch.reference, reference.metadata, device)
    lrn = None
    if learner is not None and batch.learner:
        lrn = pair_embeddings(batch.learner, learner.metadata, device)
    choice = choose(
        config.method,
        ref,
        lrn,
        config.criterion,
        config.ratio,
        chunks,
        config.temperature,
        generator=_generator(device, config.seed, batch.index, DRAW),
        random_generator=_generator(device, config.seed, batch.index, RANDOM_BATCH),
        false_negatives=config.mask_threshold,
    )
    selection = choice.selection
    indices = pa.array(selection.indices.cpu().numpy())
    result = SuperBatchResult(
        super_batch=batch.index,
        size=n,
        selected=len(selection),
        shards=batch.shards,
        selected_score=float(choice.selected_score),
        random_score=float(choice.random_score),
        selected_masked=_float(choice.selected_masked),
        random_masked=_float(choice.random_masked),
    )
    rows = pa.table(
        {
            "key": batch.key.take(indices),
            "shard": batch.shard.take(indices).cast(pa.string()),
            "batch": pa.array(np.full(len(selection), batch.index, np.int64)),  # one batch per super-batch
            "super_batch": pa.array(np.full(len(selection), batch.index, np.int64)),
            "chunk": pa.array(selection.chunk.cpu().numpy().astype(np.int32)),
            "score": pa.array(selection.score.float().cpu().numpy().astype(np.float32)),
            "sha256": batch.sha256.take(indices),
        },
        schema=MANIFEST_SCHEMA,
    )
    return SelectedBatch(batch.index, n, str(device), rows, result)


def pair_embeddings(embeddings: Embeddings, meta: ScoreMetadata, device: torch.device) -> PairEmbeddings:
    """One model's embeddings of a super-batch as tensors on `device`, in the dtype its GEMMs read."""
    # CUDA keeps float16 (the fp32-accumulating GEMM reads it directly); the CPU upcasts once, not per block.
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    image, text = (
        torch.from_numpy(a).to(device=device, dtype=dtype) for a in (embeddings.image, embeddings.text)
    )
    return PairEmbeddings(image, text, meta.logit_scale, meta.logit_bias)


def _generator(device: torch.device, seed: int, super_batch: int, stream: int) -> torch.Generator:
    return torch.Generator(device).manual_seed(stream_seed(seed, super_batch, stream))


def _float(value: torch.Tensor | None) -> float | None:
    return None if value is None else float(value)
