-- One delivery's warnings (table load_warnings), for the school's "what to fix" file.
SELECT line, column_name, reason
FROM load_warnings
WHERE delivery_id = $id AND source_file = $file
ORDER BY line, column_name
