"""`curate import`'s settings and the counts it reports."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from curate.errors import CurateError
from curate.imports.calibrate import Calibration

SOURCES = ("datacomp", "clip-retrieval")
# DataComp's .npz arrays: which pair `--embeddings` reads, the reference that computed them, its D and size.
DATACOMP_EMBEDDINGS = {
    "l14": ("OpenAI CLIP ViT-L/14", 768, 224),
    "b32": ("OpenAI CLIP ViT-B/32", 512, 224),
}
# clip-retrieval's metadata columns that can name a sample (LAION's `key` is img2dataset's, from its crawl).
CLIP_RETRIEVAL_KEYS = ("key", "url")


@dataclass(frozen=True)
class ImportConfig:
    source: str  # one of SOURCES
    embeddings: str = "l14"  # datacomp: which of its arrays (DATACOMP_EMBEDDINGS)
    model: str = ""  # clip-retrieval: what computed the embeddings, as the user names it (recorded)
    key: str = "key"  # clip-retrieval: the metadata column that names a sample (CLIP_RETRIEVAL_KEYS)
    shards: str | None = None  # downloaded img2dataset shards whose samples the pool's rows are matched to
    seed: int = 0  # draws the calibration's files, rows and batches

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise CurateError(f"unknown pool layout {self.source!r}; one of {', '.join(SOURCES)}")
        if self.embeddings not in DATACOMP_EMBEDDINGS:
            raise CurateError(
                f"--embeddings must be one of {', '.join(DATACOMP_EMBEDDINGS)}, got {self.embeddings!r}"
            )
        if self.key not in CLIP_RETRIEVAL_KEYS:
            raise CurateError(f"--key must be one of {', '.join(CLIP_RETRIEVAL_KEYS)}, got {self.key!r}")
        if self.seed < 0:
            raise CurateError(f"--seed must be 0 or more, got {self.seed}")

    @property
    def key_column(self) -> str:
        """The pool's column that names a sample: its score key, and what `--shards` is matched by."""
        return "uid" if self.source == "datacomp" else self.key

    @property
    def reference(self) -> str:
        """The model behind the embeddings, named as honestly as the pool lets us (`curate.model`)."""
        if self.source == "datacomp":
            return f"{DATACOMP_EMBEDDINGS[self.embeddings][0]} as shipped by DataComp"
        return f"{self.model or 'an unnamed CLIP model'} as shipped in clip-retrieval's layout"

    @property
    def imported(self) -> str:
        """What the embeddings are (`curate.imported`): where they came from, computed by someone else."""
        if self.source == "datacomp":
            return f"DataComp pool .npz arrays {self.embeddings}_img and {self.embeddings}_txt"
        return "clip-retrieval img_emb and text_emb .npy arrays"


@dataclass
class ImportSummary:
    files_done: int = 0
    files_skipped: int = 0  # imported by an earlier run
    ok: int = 0
    failed: Counter = field(default_factory=Counter)  # status -> rows
    matched: int = 0  # rows matched to a downloaded shard's sample (--shards)
    unmatched: int = 0  # rows --shards holds no sample of: not downloaded (or failed to)
    calibration: Calibration | None = None
    calibration_reused: bool = False  # (t, b) read from the folder's files (a resumed import)
    seconds: float = 0.0

    @property
    def samples(self) -> int:
        return self.ok + sum(self.failed.values())

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0
