-- The score ranges the current registry declares, per registered round (microtrials.ingest.plausibility):
-- the intervention with its '|'-separated aliases, the primary outcome_measure, and the bounds.
SELECT intervention, aliases, outcome_measure, outcome_min, outcome_max, baseline_min, baseline_max
FROM registry_rounds
WHERE coalesce(outcome_min, outcome_max, baseline_min, baseline_max) IS NOT NULL
