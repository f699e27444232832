-- Forget a run's staged disclosure state (it is staged again).
DELETE FROM disclosure_states WHERE run_id = $run_id
