-- Load warnings of the given files, as an officer reads them (never a pupil_id): where and why a
-- value was blanked or an outcome kept as no post-test; a warning about a whole file has no line.
SELECT source_file AS file, line, column_name AS "column", reason
FROM load_warnings
WHERE list_contains($files, source_file)
ORDER BY source_file, line NULLS FIRST, column_name
LIMIT 500
