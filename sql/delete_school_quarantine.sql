-- Remove quarantine rows the new deliveries supersede: every row from an earlier delivery of a file
-- with the same name as a loaded file (`batch_files`), and each file's school's rows for the trials
-- it names (`batch_trials`), except the rows of a held trial (one the delivery may not replace)
-- whose delivery still has pupil rows for that trial: they explain the rows that stay.
DELETE FROM quarantine
WHERE (
    source_file IN (SELECT file_name FROM batch_files)
    OR EXISTS (
        SELECT 1 FROM batch_trials AS t
        WHERE t.school_urn = quarantine.school_urn
          AND t.intervention = quarantine.intervention
          AND t.outcome_measure = quarantine.outcome_measure
    )
)
AND NOT EXISTS (
    SELECT 1 FROM batch_trials AS t
    JOIN pupils AS p
      ON p.school_urn = t.school_urn AND p.intervention = t.intervention AND p.outcome_measure = t.outcome_measure
    WHERE t.held
      AND t.school_urn = quarantine.school_urn
      AND t.intervention = quarantine.intervention
      AND t.outcome_measure = quarantine.outcome_measure
      AND p.delivery_id = quarantine.delivery_id
)
