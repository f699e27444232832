-- A withdrawn school's load warnings go with its pupils: every warning of the school when it
-- leaves altogether ($whole), else those of the trials withdrawn (registered frame `batch_replace`)
-- whose delivery has no pupil row left for that trial.
DELETE FROM load_warnings
WHERE school_urn = $urn
  AND (
    $whole
    OR (
        EXISTS (
            SELECT 1 FROM batch_replace AS t
            WHERE t.intervention = load_warnings.intervention AND t.outcome_measure = load_warnings.outcome_measure
        )
        AND NOT EXISTS (
            SELECT 1 FROM pupils AS p
            WHERE p.delivery_id = load_warnings.delivery_id AND p.school_urn = load_warnings.school_urn
              AND p.intervention = load_warnings.intervention AND p.outcome_measure = load_warnings.outcome_measure
        )
    )
  )
