-- The run's publication was swapped in: its disclosure state is what the next publication is audited against.
UPDATE disclosure_states SET confirmed = true WHERE run_id = $run_id;
