"""`curate train`: a SigLIP trainer over shards or manifests, with online JEST."""

from curate.train.config import DataConfig, OnlineJestConfig, OptimConfig, TrainConfig
from curate.train.loop import TrainSummary, train

__all__ = ["DataConfig", "OnlineJestConfig", "OptimConfig", "TrainConfig", "TrainSummary", "train"]
