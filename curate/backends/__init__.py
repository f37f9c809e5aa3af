"""Where the per-shard and per-super-batch work runs: in this process (`local`) or on a Ray cluster (`ray`).

Both backends call the same functions (`curate.score.unit.score_batches`,
`curate.select.superbatch.select_super_batch`); a backend only decides where they run.
"""

BACKENDS = ("local", "ray")
