-- The rows set aside of several deliveries at once (one query per run, not one per file), for
-- the schools' "what to fix" files (never a pupil_id).
SELECT delivery_id, source_file, line, column_name, reason
FROM quarantine
WHERE delivery_id IN (SELECT unnest($ids))
ORDER BY delivery_id, source_file, line, column_name
