-- Insert the validated, pseudonymised rows of the registered frame `batch_pupils` (one or more files)
-- that an applied change set carries (`batch_insert`: file_name, intervention, outcome_measure, round);
-- the rows of a held change set are not inserted.
INSERT INTO pupils (
    school_urn, pupil_key, intervention, outcome_measure, arm, outcome, baseline,
    fsm, gender, year_group, send, source_file, source_line, delivery_id, round
)
SELECT
    school_urn, pupil_key, intervention, outcome_measure, arm, outcome, baseline,
    fsm, gender, year_group, send, source_file, line, delivery_id, round
FROM batch_pupils AS b
WHERE EXISTS (
    SELECT 1 FROM batch_insert AS t
    WHERE t.file_name = b.source_file
      AND t.intervention = b.intervention AND t.outcome_measure = b.outcome_measure
      AND coalesce(t."round", '') = coalesce(b."round", '')
)
