-- Record one file seen: what it was, whose, which trials, and what became of its rows.
INSERT INTO deliveries (
    delivery_id, file_name, school_urn, trials, rows_read, rows_loaded, rows_quarantined,
    columns_dropped, status, reason, report_json
)
VALUES (
    $delivery_id, $file_name, $school_urn, $trials, $rows_read, $rows_loaded, $rows_quarantined,
    $columns_dropped, $status, $reason, $report_json
)
