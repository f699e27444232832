-- Insert the quarantine entries of the registered frame `batch_quarantine` (no pupil_id), each with
-- the round its trial key resolved to now (`batch_quarantine_rounds`, as the pupil rows keep `key_round`;
-- NULL for a row naming no intervention or outcome measure).
INSERT INTO quarantine (
    delivery_id, source_file, line, school_urn, column_name, reason, intervention, outcome_measure, rule,
    "round", key_round
)
SELECT q.delivery_id, q.source_file, q.line, q.school_urn, q.column_name, q.reason, q.intervention,
       q.outcome_measure, q.rule, q."round", k.key_round
FROM batch_quarantine AS q
LEFT JOIN batch_quarantine_rounds AS k
    ON k.school_urn IS NOT DISTINCT FROM q.school_urn
   AND k.intervention = q.intervention AND k.outcome_measure = q.outcome_measure
   AND k."round" IS NOT DISTINCT FROM q."round"
