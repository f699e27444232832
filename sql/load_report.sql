-- The last load's per-file report (no pupil identifiers).
SELECT * FROM load_report ORDER BY file_name
