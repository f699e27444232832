-- Insert the load warnings of the registered frame `batch_warnings` (no pupil_id): values blanked
-- in loaded rows, outcomes kept as no post-test, and file-level warnings (line NULL).
INSERT INTO load_warnings (
    delivery_id, source_file, line, school_urn, column_name, rule, reason, intervention, outcome_measure
)
SELECT delivery_id, source_file, line, school_urn, column_name, rule, reason, intervention, outcome_measure
FROM batch_warnings
