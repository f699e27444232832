-- Trials a delivery must not replace: the school already has rows for the trial and the new file
-- brings none of them, or fewer than half as many (registered frames `batch_trials` and
-- `batch_pupils`). The school's earlier rows for those trials are kept.
WITH incoming AS (
    SELECT school_urn, intervention, outcome_measure, count(*) AS rows_new
    FROM batch_pupils
    GROUP BY school_urn, intervention, outcome_measure
),
held AS (
    SELECT p.school_urn, p.intervention, p.outcome_measure, count(*) AS rows_before
    FROM pupils AS p
    WHERE EXISTS (
        SELECT 1 FROM batch_trials AS t
        WHERE t.school_urn = p.school_urn
          AND t.intervention = p.intervention
          AND t.outcome_measure = p.outcome_measure
    )
    GROUP BY p.school_urn, p.intervention, p.outcome_measure
)
SELECT t.file_name, t.intervention, t.outcome_measure, coalesce(i.rows_new, 0) AS rows_new, h.rows_before
FROM batch_trials AS t
JOIN held AS h
  ON h.school_urn = t.school_urn AND h.intervention = t.intervention AND h.outcome_measure = t.outcome_measure
LEFT JOIN incoming AS i
  ON i.school_urn = t.school_urn AND i.intervention = t.intervention AND i.outcome_measure = t.outcome_measure
WHERE 2 * coalesce(i.rows_new, 0) < h.rows_before
ORDER BY t.file_name, t.intervention, t.outcome_measure
