-- The records of these exact files (registered frame `batch_keys`: same name, same content hash)
-- that were loaded or held, when that record is still the latest under the file's name
-- (`latest_deliveries`): a school that sends an earlier file again (to undo a wrong one) has it
-- applied again, not "unchanged".
SELECT latest.delivery_id, latest.file_name, latest.report_json, latest.status
FROM latest_deliveries AS latest
JOIN batch_keys AS k ON latest.delivery_id = k.delivery_id AND latest.file_name = k.file_name
WHERE latest.status IN ('loaded', 'held', 'partly held')
