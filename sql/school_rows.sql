-- The pupil rows the warehouse holds for the schools of a delivery (registered frame `batch_schools`):
-- what microtrials.ingest.change_sets.plan_changes compares a delivery with (pupil keys, outcome scores, and
-- the values a redelivery can change for the same pupils: arm, baseline, fsm, gender, year_group, send).
SELECT school_urn, intervention, outcome_measure, coalesce("round", '') AS "round", pupil_key,
       outcome, key_round, arm, baseline, fsm, gender, year_group, send
FROM pupils
WHERE school_urn IN (SELECT school_urn FROM batch_schools)
