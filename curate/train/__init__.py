"""`curate train`: a SigLIP trainer over shards or manifests, with online JEST."""

from curate.train.config import TrainConfig
from curate.train.loop import TrainSummary, train

__all__ = ["TrainConfig", "TrainSummary", "train"]
