-- The current registry's bad rows, by line.
SELECT * FROM registry_problems ORDER BY line, column_name
