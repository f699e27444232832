-- Insert the quarantine entries of the registered frame `delivery_quarantine` (no pupil_id).
INSERT INTO quarantine (
    delivery_id, source_file, line, school_urn, column_name, reason, intervention, outcome_measure, rule
)
SELECT $delivery_id, $file_name, line, school_urn, column_name, reason, intervention, outcome_measure, rule
FROM delivery_quarantine
