-- Remove quarantine rows the new deliveries supersede: every row from an earlier delivery of a file
-- with the same name as a loaded file (`batch_files`), and each file's school's rows for the trials
-- it names (`batch_trials`).
DELETE FROM quarantine
WHERE source_file IN (SELECT file_name FROM batch_files)
   OR EXISTS (
       SELECT 1 FROM batch_trials AS t
       WHERE t.school_urn = quarantine.school_urn
         AND t.intervention = quarantine.intervention
         AND t.outcome_measure = quarantine.outcome_measure
   )
