-- Every delivery seen, oldest first.
SELECT * FROM deliveries ORDER BY loaded_at, file_name
