-- The pupil rows the warehouse holds for the schools of a delivery (registered frame `batch_schools`):
-- what microtrials.ingest.change_sets.plan_changes compares a delivery with (no row is read back out).
SELECT school_urn, intervention, outcome_measure, coalesce("round", '') AS "round", pupil_key,
       outcome IS NOT NULL AS scored, key_round
FROM pupils
WHERE school_urn IN (SELECT school_urn FROM batch_schools)
