-- The record of this exact file (same name, same content hash) if it was loaded: its stored report.
SELECT status, report_json
FROM deliveries
WHERE delivery_id = $delivery_id AND file_name = $file_name AND status = 'loaded'
ORDER BY loaded_at DESC
LIMIT 1
