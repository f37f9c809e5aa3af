"""Where the per-shard and per-partition work runs: in this process (`local`) or on a Ray cluster (`ray`).

Both backends call the same functions (`curate.score.unit.score_batches` per shard,
`curate.select.partition.run_partition` per partition of the score files); a backend only decides where they
run.
"""

BACKENDS = ("local", "ray")
