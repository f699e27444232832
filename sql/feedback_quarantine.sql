-- One delivery's rows set aside, for the school's "what to fix" file (never a pupil_id).
SELECT line, column_name, reason
FROM quarantine
WHERE delivery_id = $id AND source_file = $file
ORDER BY line, column_name
