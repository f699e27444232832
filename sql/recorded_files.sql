-- Which of these files (registered frame `files_now`: file_name, delivery_id) have that content as
-- the latest `deliveries` record under their name (loaded, held or rejected)? A file changed back
-- to an earlier content is not recorded: it is loaded again.
SELECT latest.file_name, latest.delivery_id
FROM (
    SELECT d.file_name, d.delivery_id
    FROM deliveries AS d
    WHERE d.file_name IN (SELECT file_name FROM files_now)
    QUALIFY row_number() OVER (PARTITION BY d.file_name ORDER BY d.loaded_at DESC) = 1
) AS latest
JOIN files_now AS f ON latest.file_name = f.file_name AND latest.delivery_id = f.delivery_id
