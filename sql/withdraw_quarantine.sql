-- A withdrawn school's rows set aside go with its pupils: every quarantine row of the school when it
-- leaves altogether ($whole), else those of the trials withdrawn (registered frame `batch_replace`)
-- whose delivery has no pupil row left for that trial.
DELETE FROM quarantine
WHERE school_urn = $urn
  AND (
    $whole
    OR (
        EXISTS (
            SELECT 1 FROM batch_replace AS t
            WHERE t.intervention = quarantine.intervention AND t.outcome_measure = quarantine.outcome_measure
        )
        AND NOT EXISTS (
            SELECT 1 FROM pupils AS p
            WHERE p.delivery_id = quarantine.delivery_id AND p.school_urn = quarantine.school_urn
              AND p.intervention = quarantine.intervention AND p.outcome_measure = quarantine.outcome_measure
        )
    )
  )
