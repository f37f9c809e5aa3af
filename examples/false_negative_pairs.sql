-- How many of a selection's in-batch pairs the reference sees as one thing (what `--false-negatives
-- mask:0.99` would zero): the share of ordered pairs (i ≠ j) of each batch whose reference image–image or
-- text–text cosine is above 0.99 (edit the two 0.99 for another T).
--   curate query --manifest manifest/ --scores scores/ -- "$(cat examples/false_negative_pairs.sql)"
-- A masked selection's summary.json gives the same share for random batches (masked_share.random).
WITH member AS (SELECT batch, key, image_emb, text_emb FROM manifest JOIN scores USING (key))
SELECT
    count(DISTINCT a.batch) AS batches,
    avg(
        CASE
            WHEN list_cosine_similarity(a.image_emb, b.image_emb) > 0.99
              OR list_cosine_similarity(a.text_emb, b.text_emb) > 0.99 THEN 1.0
            ELSE 0.0
        END
    ) AS same_pair_share
FROM member AS a JOIN member AS b ON a.batch = b.batch AND a.key <> b.key
