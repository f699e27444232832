-- Insert the validated, pseudonymised rows of the registered frame `batch_pupils` (one or more files),
-- except those of a trial the delivery may not replace (`batch_trials.held`).
INSERT INTO pupils (
    school_urn, pupil_key, intervention, outcome_measure, arm, outcome, baseline,
    fsm, gender, year_group, send, source_file, source_line, delivery_id, round
)
SELECT
    school_urn, pupil_key, intervention, outcome_measure, arm, outcome, baseline,
    fsm, gender, year_group, send, source_file, line, delivery_id, round
FROM batch_pupils AS b
WHERE NOT EXISTS (
    SELECT 1 FROM batch_trials AS t
    WHERE t.held AND t.file_name = b.source_file
      AND t.intervention = b.intervention AND t.outcome_measure = b.outcome_measure
)
