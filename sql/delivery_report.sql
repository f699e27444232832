-- The records of these exact files (registered frame `batch_keys`: same name, same content hash)
-- that were loaded or held: the latest stored report of each, with its status.
SELECT d.delivery_id, d.file_name, d.report_json, d.status
FROM deliveries AS d
JOIN batch_keys AS k ON d.delivery_id = k.delivery_id AND d.file_name = k.file_name
WHERE d.status IN ('loaded', 'held', 'partly held')
QUALIFY row_number() OVER (PARTITION BY d.delivery_id, d.file_name ORDER BY d.loaded_at DESC) = 1
