-- Quarantined rows of the given files, as an officer reads them (never a pupil_id).
SELECT source_file AS file, line, column_name AS "column", reason
FROM quarantine
WHERE list_contains($files, source_file)
ORDER BY source_file, line, column_name
LIMIT 500
