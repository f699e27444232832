-- Keep one staged publication's disclosure state, unconfirmed until its swap (delete_disclosure_state first).
INSERT INTO disclosure_states VALUES ($run_id, $staged_at, false, $state_json, $shown_json)
