-- When the content each file name now holds first arrived (`latest_deliveries`): the to-do list's
-- order of a school's files, so a rejection a later good file of the school made good is no longer a to-do.
SELECT file_name, loaded_at AS arrived_at FROM latest_deliveries
