-- The warnings (table load_warnings) of several deliveries at once, for the "what to fix" files.
SELECT delivery_id, source_file, line, column_name, reason
FROM load_warnings
WHERE delivery_id IN (SELECT unnest($ids))
ORDER BY delivery_id, source_file, line, column_name
