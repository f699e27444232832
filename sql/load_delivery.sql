-- Record the files seen (registered frame `batch_deliveries`): what each was, whose, which trials,
-- and what became of its rows.
INSERT INTO deliveries (
    delivery_id, file_name, school_urn, trials, rows_read, rows_loaded, rows_quarantined,
    columns_dropped, status, reason, report_json
)
SELECT
    delivery_id, file_name, school_urn, trials, rows_read, rows_loaded, rows_quarantined,
    columns_dropped, status, reason, report_json
FROM batch_deliveries
