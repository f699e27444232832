-- Trials a delivery must not replace: the school already has rows for the trial (under any spelling
-- with the same match key: `batch_trials` has one row per stored spelling, with the file's own
-- spelling in file_intervention / file_outcome_measure) and the new file brings fewer than half as
-- many rows, or fewer than half as many outcomes (registered frames `batch_trials`, `batch_pupils`).
-- The school's earlier rows for those trials are kept.
WITH incoming AS (
    SELECT school_urn, intervention, outcome_measure, count(*) AS rows_new, count(outcome) AS outcomes_new
    FROM batch_pupils
    GROUP BY school_urn, intervention, outcome_measure
),
earlier AS (
    SELECT t.file_name, t.school_urn, t.file_intervention, t.file_outcome_measure,
           count(*) AS rows_before, count(p.outcome) AS outcomes_before
    FROM batch_trials AS t
    JOIN pupils AS p
      ON p.school_urn = t.school_urn AND p.intervention = t.intervention AND p.outcome_measure = t.outcome_measure
    GROUP BY t.file_name, t.school_urn, t.file_intervention, t.file_outcome_measure
)
SELECT e.file_name, e.file_intervention, e.file_outcome_measure,
       coalesce(i.rows_new, 0) AS rows_new, e.rows_before,
       coalesce(i.outcomes_new, 0) AS outcomes_new, e.outcomes_before
FROM earlier AS e
LEFT JOIN incoming AS i
  ON i.school_urn = e.school_urn AND i.intervention = e.file_intervention
 AND i.outcome_measure = e.file_outcome_measure
WHERE 2 * coalesce(i.rows_new, 0) < e.rows_before
   OR 2 * coalesce(i.outcomes_new, 0) < e.outcomes_before
ORDER BY e.file_name, e.file_intervention, e.file_outcome_measure
