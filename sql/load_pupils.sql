-- Insert the validated, pseudonymised rows of the registered frame `batch_pupils` (one or more files)
-- that an applied change set carries (`batch_insert`: file_name, intervention, outcome_measure, round,
-- key_round: the trial key's round resolved now, kept with the row); the rows of a held change set are not inserted.
INSERT INTO pupils (
    school_urn, pupil_key, intervention, outcome_measure, arm, outcome, baseline,
    fsm, gender, year_group, send, source_file, source_line, delivery_id, round, key_round
)
SELECT
    b.school_urn, b.pupil_key, b.intervention, b.outcome_measure, b.arm, b.outcome, b.baseline,
    b.fsm, b.gender, b.year_group, b.send, b.source_file, b.line, b.delivery_id, b."round", t.key_round
FROM batch_pupils AS b
JOIN batch_insert AS t
    ON t.file_name = b.source_file
   AND t.intervention = b.intervention AND t.outcome_measure = b.outcome_measure
   AND coalesce(t."round", '') = coalesce(b."round", '')
