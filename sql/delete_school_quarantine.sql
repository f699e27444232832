-- Remove quarantine rows a new delivery supersedes: every row from an earlier delivery of a file
-- with the same name, and the school's rows for the trials in `delivery_trials`.
DELETE FROM quarantine
WHERE source_file = $file_name
   OR (
       school_urn = $school_urn
       AND EXISTS (
           SELECT 1 FROM delivery_trials AS t
           WHERE t.intervention = quarantine.intervention AND t.outcome_measure = quarantine.outcome_measure
       )
   )
