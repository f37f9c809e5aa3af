"""The reference's cached embeddings for online JEST, read shard by shard where the shard is decoded.

The score folder (`curate score` output) holds one file per shard, named after it (`score_file`). The
trainer opens the folder once (`open_score_folder` checks every file is one model's at one resolution; its
metadata gives t, b and the model); each data worker reads, through that `ScoreFolder`, the score file of
the shard it is decoding and attaches each eligible sample's two embeddings to it. So no process holds the
whole reference (O(N·D)): only the shards being decoded, and the embeddings of the samples in flight or
cached.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset

from curate.score.schema import (
    ELIGIBILITY_COLUMNS,
    OK,
    ScoreFolder,
    ScoreMetadata,
    checked_embeddings,
    eligible_rows,
    open_score_folder,
)
from curate.shards.batches import ShardBatch, ShardBatches

NO_REFERENCE = "no_reference_score"  # the skip reason of a sample without an eligible reference row


@dataclass(frozen=True)
class ShardReference:
    """One shard's reference rows: key -> row of `image` and `text` ((n, D) float16: its eligible rows)."""

    index: dict[str, int]
    image: np.ndarray
    text: np.ndarray

    def rows(self, keys: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(len(keys), D) float16 image and text embeddings of `keys`, every one of which has a row."""
        rows = [self.index[key] for key in keys]
        return torch.from_numpy(self.image[rows]), torch.from_numpy(self.text[rows])


@dataclass(frozen=True)
class Reference:
    """A reference score folder, opened once: its files and the model that wrote them."""

    scores: ScoreFolder

    @classmethod
    def open(cls, path: str) -> Reference:
        return cls(open_score_folder(path, "--ref"))  # one-line errors; one model at one resolution

    @property
    def metadata(self) -> ScoreMetadata:
        return self.scores.metadata

    def shard(self, shard: str) -> ShardReference:
        """The eligible rows of `shard`'s score file (a duplicated key keeps its first); none when the
        folder holds no file for it."""
        file_id = self.scores.file_of(shard)
        if file_id is None:
            empty = np.zeros((0, self.metadata.embed_dim), np.float16)
            return ShardReference({}, empty, empty)
        table = self.scores.read_file(file_id, ["key", "image_emb", "text_emb", *ELIGIBILITY_COLUMNS])
        eligible = eligible_rows(table)
        first: dict[str, int] = {}  # key -> its first eligible row in the file
        for row, key in enumerate(table["key"].to_pylist()):
            if eligible[row]:
                first.setdefault(key, row)
        rows = np.fromiter(first.values(), np.int64, len(first))  # the rows it serves, kept and checked
        path, dim = self.scores.files[file_id], self.metadata.embed_dim
        image = checked_embeddings(table["image_emb"], path, dim, rows)
        text = checked_embeddings(table["text_emb"], path, dim, rows)
        return ShardReference({key: i for i, key in enumerate(first)}, image, text)


def with_reference(
    batch: ShardBatch, reference: ShardReference
) -> tuple[ShardBatch, tuple[torch.Tensor, torch.Tensor]]:
    """`batch` less the decoded samples that have no reference row (their status becomes NO_REFERENCE, so
    `DecodeReport` counts them), and the reference's embeddings of the decoded samples it keeps."""
    decoded = [i for i, status in enumerate(batch.status) if status == OK]  # row j of images is decoded[j]
    kept = [j for j, i in enumerate(decoded) if batch.keys[i] in reference.index]
    if len(kept) < len(decoded):
        status = [
            NO_REFERENCE if s == OK and k not in reference.index else s
            for k, s in zip(batch.keys, batch.status, strict=True)
        ]
        rows = torch.tensor(kept, dtype=torch.long)
        batch = dataclasses.replace(
            batch, status=status, images=batch.images[rows], tokens=batch.tokens[rows]
        )
    return batch, reference.rows([batch.keys[decoded[j]] for j in kept])


class ReferencedBatches(IterableDataset):
    """`ShardBatches` whose batches carry their decoded samples' reference embeddings: items are (batch,
    (image, text) embeddings of its decoded samples); a decoded sample without a reference row is marked
    NO_REFERENCE and dropped. Each worker reads the score file of the shard it decodes, once."""

    def __init__(self, batches: ShardBatches, reference: Reference):
        self.batches, self.reference = batches, reference

    def __iter__(self) -> Iterator[tuple[ShardBatch, tuple[torch.Tensor, torch.Tensor]]]:
        shard, rows = None, None
        for batch in self.batches:  # ShardBatches shares the shards out among the workers itself
            if batch.shard != shard:  # a worker's batches of a shard come together
                shard, rows = batch.shard, self.reference.shard(batch.shard)
            yield with_reference(batch, rows)
