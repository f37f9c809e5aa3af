"""`curate eval`: zero-shot classification and image–text retrieval on an eval set.

config.py    the settings (`EvalConfig`) and what the command reports (`EvalReport`)
evalset.py   clip_benchmark's webdataset layout: `write_eval_set`, `read_eval_set`, and `EvalSet`
metrics.py   zero-shot and retrieval metrics from embeddings
run.py       the unit, `evaluate` (a loaded model on an `EvalSet`: what `curate train --eval` runs every
             few steps), and the driver, `run_eval` (the whole command: read, load, evaluate once, report)
"""

from curate.evaluate.config import EvalConfig, EvalReport
from curate.evaluate.evalset import (
    CLASS_PLACEHOLDER,
    EvalSample,
    EvalSet,
    RawEvalSet,
    read_eval_set,
    write_eval_set,
)
from curate.evaluate.metrics import class_embeddings, retrieval_metrics, zeroshot_metrics
from curate.evaluate.run import evaluate, run_eval

__all__ = [
    "CLASS_PLACEHOLDER",
    "EvalConfig",
    "EvalReport",
    "EvalSample",
    "EvalSet",
    "RawEvalSet",
    "class_embeddings",
    "evaluate",
    "read_eval_set",
    "retrieval_metrics",
    "run_eval",
    "write_eval_set",
    "zeroshot_metrics",
]
