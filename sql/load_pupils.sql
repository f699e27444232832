-- Insert the validated, pseudonymised rows of the registered frame `batch_pupils` (one or more files).
INSERT INTO pupils (
    school_urn, pupil_key, intervention, outcome_measure, arm, outcome, baseline,
    fsm, gender, year_group, send, source_file, source_line, delivery_id, round
)
SELECT
    school_urn, pupil_key, intervention, outcome_measure, arm, outcome, baseline,
    fsm, gender, year_group, send, source_file, line, delivery_id, round
FROM batch_pupils
