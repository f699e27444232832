-- Which of these files (registered frame `batch_keys`: delivery_id, file_name, status) have been
-- recorded with that status before?
SELECT DISTINCT d.delivery_id, d.file_name
FROM deliveries AS d
JOIN batch_keys AS k ON d.delivery_id = k.delivery_id AND d.file_name = k.file_name AND d.status = k.status
