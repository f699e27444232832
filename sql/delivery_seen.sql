-- Which of these files (registered frame `batch_keys`: delivery_id, file_name, status) are already
-- recorded with that content and status as the latest record under their name (`latest_deliveries`;
-- another connection wrote them meanwhile)? An older record of the same content does not count:
-- sending an earlier file again is a new delivery.
SELECT latest.delivery_id, latest.file_name
FROM latest_deliveries AS latest
JOIN batch_keys AS k
  ON latest.delivery_id = k.delivery_id AND latest.file_name = k.file_name AND latest.status = k.status
