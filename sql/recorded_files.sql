-- Which of these files (registered frame `files_now`: file_name, delivery_id) have that content as
-- the latest `deliveries` record under their name (`latest_deliveries`: loaded, held or rejected)?
-- A file changed back to an earlier content is not recorded: it is loaded again.
SELECT latest.file_name, latest.delivery_id
FROM latest_deliveries AS latest
JOIN files_now AS f ON latest.file_name = f.file_name AND latest.delivery_id = f.delivery_id
