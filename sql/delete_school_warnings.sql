-- Remove load warnings the new deliveries supersede, as for quarantine: every warning from an
-- earlier delivery of a file with the same name as a loaded file (`batch_files`), and each file's
-- school's warnings for the trials it names (`batch_trials`), except those of a held trial (one
-- the delivery may not replace) whose delivery still has pupil rows for that trial.
DELETE FROM load_warnings
WHERE (
    source_file IN (SELECT file_name FROM batch_files)
    OR EXISTS (
        SELECT 1 FROM batch_trials AS t
        WHERE t.school_urn = load_warnings.school_urn
          AND t.intervention = load_warnings.intervention
          AND t.outcome_measure = load_warnings.outcome_measure
    )
)
AND NOT EXISTS (
    SELECT 1 FROM batch_trials AS t
    JOIN pupils AS p
      ON p.school_urn = t.school_urn AND p.intervention = t.intervention AND p.outcome_measure = t.outcome_measure
    WHERE t.held
      AND t.school_urn = load_warnings.school_urn
      AND t.intervention = load_warnings.intervention
      AND t.outcome_measure = load_warnings.outcome_measure
      AND p.delivery_id = load_warnings.delivery_id
)
