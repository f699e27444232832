-- Has this exact file (same name, same content hash) been recorded with this status before?
SELECT count(*) > 0 AS seen
FROM deliveries
WHERE delivery_id = $delivery_id AND file_name = $file_name AND status = $status
