"""`curate train`: a SigLIP trainer over shards or manifests, with online JEST.

The loop, and open_clip with it (seconds of imports), loads on first use of `train`: the run folder's
readers in curate.train.run, which `curate report` and the cost lineage use, need neither.
"""

from typing import TYPE_CHECKING

from curate.train.config import DataConfig, OnlineJestConfig, OptimConfig, TrainConfig

if TYPE_CHECKING:
    from curate.train.loop import TrainSummary, train

__all__ = ["DataConfig", "OnlineJestConfig", "OptimConfig", "TrainConfig", "TrainSummary", "train"]


def __getattr__(name: str) -> object:
    if name in ("TrainSummary", "train"):
        from curate.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
