"""Reading and writing shards in img2dataset's webdataset layout."""

from curate.shards.images import decode_rgb, image_decodes
from curate.shards.paths import count_samples, expand_shards, folder_files, shard_sibling
from curate.shards.reader import ReadStats, Sample, iter_members, iter_samples, iter_shard
from curate.shards.schema import (
    SHARD_TABLE_SCHEMA,
    STATS_SUFFIX,
    SUCCESS,
    member_name,
    sample_key,
    shard_name,
    shard_stats,
    split_member_name,
)
from curate.shards.writer import (
    ShardRecord,
    shard_done,
    write_shard,
    write_shard_files,
    write_sizes,
    write_tar,
)

__all__ = [
    "SHARD_TABLE_SCHEMA",
    "STATS_SUFFIX",
    "SUCCESS",
    "ReadStats",
    "Sample",
    "ShardRecord",
    "count_samples",
    "decode_rgb",
    "expand_shards",
    "folder_files",
    "image_decodes",
    "iter_members",
    "iter_samples",
    "iter_shard",
    "member_name",
    "sample_key",
    "shard_done",
    "shard_name",
    "shard_sibling",
    "shard_stats",
    "split_member_name",
    "write_shard",
    "write_shard_files",
    "write_sizes",
    "write_tar",
]
