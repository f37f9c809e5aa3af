-- How well a `curate dedup` run finds the duplicates `curate synth` planted (run it on a synth crawl):
--   curate query --keep keep/ --scores scores/ --shards data/web -- "$(cat examples/dedup_recall.sql)"
-- (the `--` ends the options: the SQL starts with a comment)
-- planted_found: planted duplicates of which the copy or its source was removed (the pair is no longer
-- both kept); clean_removed: clean pairs (noise none) that are neither a planted copy nor the source of
-- one, removed. Only status-ok score rows count: dedup compares those alone.
WITH kept AS (SELECT key FROM keep),
ok AS (SELECT key FROM scores WHERE status = 'ok'),
planted AS (  -- both the copy and its source scored ok
    SELECT key, duplicate_of FROM shards JOIN ok USING (key) WHERE duplicate_of IN (SELECT key FROM ok)
),
sources AS (SELECT DISTINCT duplicate_of AS key FROM planted),
unique_clean AS (
    SELECT key FROM shards JOIN ok USING (key) WHERE noise = 'none' AND key NOT IN (SELECT key FROM sources)
)
SELECT
    (SELECT count(*) FROM ok) AS ok,
    (SELECT count(*) FROM ok WHERE key NOT IN (SELECT key FROM kept)) AS removed,
    (SELECT count(*) FROM planted) AS planted,
    (SELECT count(*) FROM planted
     WHERE NOT (key IN (SELECT key FROM kept) AND duplicate_of IN (SELECT key FROM kept))) AS planted_found,
    (SELECT count(*) FROM unique_clean) AS unique_clean,
    (SELECT count(*) FROM unique_clean WHERE key NOT IN (SELECT key FROM kept)) AS clean_removed
