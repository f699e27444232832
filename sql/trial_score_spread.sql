-- Per trial and score column (outcome, baseline): how many finite scores the trial has and their
-- 1st, 25th, 50th, 75th and 99th percentiles, plus the upper quartile of their absolute values -- what a batch's scores are judged
-- against (microtrials.ingest.plausibility). The scores are the warehouse's (registered frame
-- `spelling_keys`: intervention, outcome_measure, trial_key), except those of the (school, trial)
-- pairs the batch replaces (registered `batch_pairs`: school_urn, trial_key), plus every score of
-- the batch itself (registered `batch_scores`: trial_key, column_name, score). Quartiles by linear
-- interpolation (quantile_cont), as numpy's default.
WITH stored AS (
    SELECT k.trial_key, p.outcome, p.baseline
    FROM pupils AS p
    JOIN spelling_keys AS k ON k.intervention = p.intervention AND k.outcome_measure = p.outcome_measure
    WHERE NOT EXISTS (
        SELECT 1 FROM batch_pairs AS b WHERE b.school_urn = p.school_urn AND b.trial_key = k.trial_key
    )
),
scores AS (
    SELECT trial_key, 'outcome' AS column_name, outcome AS score FROM stored
    UNION ALL
    SELECT trial_key, 'baseline' AS column_name, baseline AS score FROM stored
    UNION ALL
    SELECT trial_key, column_name, score FROM batch_scores
)
SELECT trial_key, column_name, count(*) AS scores,
       quantile_cont(score, 0.01) AS p01, quantile_cont(score, 0.25) AS q1, quantile_cont(score, 0.5) AS median,
       quantile_cont(score, 0.75) AS q3, quantile_cont(score, 0.99) AS p99, quantile_cont(abs(score), 0.75) AS abs_q3
FROM scores
WHERE score IS NOT NULL AND isfinite(score)
GROUP BY trial_key, column_name
