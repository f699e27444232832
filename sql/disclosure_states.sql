-- The disclosure states the next publication is audited against, oldest first: every confirmed one and every
-- one staged after the last confirmed one (swapped in, perhaps, by a run that died before confirming it);
-- a state identical to a later one is read once. `latest`: the last confirmed one (its shown_json is current).
WITH newest AS (SELECT max(staged_at) AS newest_at FROM disclosure_states WHERE confirmed),
wanted AS (
    SELECT *, confirmed AND staged_at = (SELECT newest_at FROM newest) AS latest,
           row_number() OVER (PARTITION BY md5(state_json) ORDER BY staged_at DESC, run_id DESC) AS copy
    FROM disclosure_states
    WHERE confirmed OR staged_at >= coalesce((SELECT newest_at FROM newest), TIMESTAMP '1900-01-01')
)
SELECT run_id, latest, state_json, CASE WHEN latest THEN shown_json END AS shown_json
FROM wanted
WHERE copy = 1 OR latest
ORDER BY staged_at, run_id
