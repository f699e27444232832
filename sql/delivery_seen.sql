-- Which of these files (registered frame `batch_keys`: delivery_id, file_name, status) are already
-- recorded with that content and status as the latest record under their name (another
-- connection wrote them meanwhile)? An older record of the same content does not count: sending
-- an earlier file again is a new delivery.
SELECT latest.delivery_id, latest.file_name
FROM (
    SELECT d.delivery_id, d.file_name, d.status
    FROM deliveries AS d
    WHERE d.file_name IN (SELECT file_name FROM batch_keys)
    QUALIFY row_number() OVER (PARTITION BY d.file_name ORDER BY d.loaded_at DESC) = 1
) AS latest
JOIN batch_keys AS k
  ON latest.delivery_id = k.delivery_id AND latest.file_name = k.file_name AND latest.status = k.status
