-- Which of these files (registered frame `files_now`: file_name, delivery_id) already have a
-- `deliveries` row for exactly that content (loaded or rejected)?
SELECT DISTINCT d.file_name, d.delivery_id
FROM deliveries AS d
JOIN files_now AS f ON d.file_name = f.file_name AND d.delivery_id = f.delivery_id
