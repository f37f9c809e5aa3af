"""Reading and writing shards in img2dataset's webdataset layout."""

from curate.shards.paths import count_samples, expand_shards
from curate.shards.reader import ReadStats, Sample, image_decodes, iter_members, iter_samples, iter_shard
from curate.shards.schema import SHARD_TABLE_SCHEMA, SUCCESS, sample_key, shard_name
from curate.shards.writer import ShardRecord, shard_done, write_shard, write_sizes

__all__ = [
    "SHARD_TABLE_SCHEMA",
    "SUCCESS",
    "ReadStats",
    "Sample",
    "ShardRecord",
    "count_samples",
    "expand_shards",
    "image_decodes",
    "iter_members",
    "iter_samples",
    "iter_shard",
    "sample_key",
    "shard_done",
    "shard_name",
    "write_shard",
    "write_sizes",
]
