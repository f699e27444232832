-- Remove load warnings the new deliveries supersede, as for quarantine: every warning from an
-- earlier delivery of a file with the same name as a loaded file (`batch_files`), and each file's
-- school's warnings for the trials it names (`batch_trials`).
DELETE FROM load_warnings
WHERE source_file IN (SELECT file_name FROM batch_files)
   OR EXISTS (
       SELECT 1 FROM batch_trials AS t
       WHERE t.school_urn = load_warnings.school_urn
         AND t.intervention = load_warnings.intervention
         AND t.outcome_measure = load_warnings.outcome_measure
   )
