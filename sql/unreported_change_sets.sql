-- The change lines recorded by the runs in $runs (run ids: runs that stopped or failed before their summary,
-- pipelines.launch.unreported_runs), held ones first, then as recorded: the next run's summary tells them.
SELECT run_id, message
FROM change_sets
WHERE list_contains($runs, run_id) AND state IN ('applied', 'held')
ORDER BY state = 'applied', recorded_at, school_urn, key_intervention, key_outcome_measure, key_round
