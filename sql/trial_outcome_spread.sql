-- Per trial (match key, registered frame `spelling_keys`: intervention, outcome_measure, trial_key),
-- the median, count and median absolute deviation of the outcome scores already in the warehouse,
-- leaving out the schools being loaded now (registered frame `batch_schools`): what a new file's
-- scores are judged against (microtrials.loading, implausible values).
WITH scores AS (
    SELECT k.trial_key, p.outcome
    FROM pupils AS p
    JOIN spelling_keys AS k ON k.intervention = p.intervention AND k.outcome_measure = p.outcome_measure
    WHERE p.outcome IS NOT NULL AND isfinite(p.outcome)
      AND p.school_urn NOT IN (SELECT school_urn FROM batch_schools)
),
centre AS (
    SELECT trial_key, median(outcome) AS median, count(*) AS scores FROM scores GROUP BY trial_key
)
SELECT c.trial_key, c.median, c.scores, median(abs(s.outcome - c.median)) AS mad
FROM scores AS s
JOIN centre AS c ON c.trial_key = s.trial_key
GROUP BY c.trial_key, c.median, c.scores
