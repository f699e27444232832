-- When the newest delivery in the warehouse was loaded: the date of the data.
SELECT max(loaded_at) AS loaded_at FROM deliveries WHERE status <> 'rejected'
