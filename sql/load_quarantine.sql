-- Insert the quarantine entries of the registered frame `batch_quarantine` (no pupil_id).
INSERT INTO quarantine (
    delivery_id, source_file, line, school_urn, column_name, reason, intervention, outcome_measure, rule
)
SELECT delivery_id, source_file, line, school_urn, column_name, reason, intervention, outcome_measure, rule
FROM batch_quarantine
