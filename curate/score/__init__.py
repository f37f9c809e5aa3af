"""`curate score`: a reference model writes both embeddings of every sample to Parquet."""

from curate.score.schema import (
    OK,
    ScoreMetadata,
    embeddings_array,
    embeddings_numpy,
    score_file,
    score_schema,
)
from curate.score.scoring import ScoreConfig, ScoreSummary, score_shards

__all__ = [
    "OK",
    "ScoreConfig",
    "ScoreMetadata",
    "ScoreSummary",
    "embeddings_array",
    "embeddings_numpy",
    "score_file",
    "score_schema",
    "score_shards",
]
