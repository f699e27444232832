-- The (school, trial key)s each of these contents (registered frame `batch_ids`: delivery_id, the file's
-- sha256) was delivered for (applied, accepted or held), with the name it was sent as (the latest such name).
SELECT delivery_id, arg_max(file_name, recorded_at) AS file_name, school_urn, key_intervention,
       key_outcome_measure, key_round
FROM change_sets
WHERE state IN ('applied', 'accepted', 'held') AND delivery_id IN (SELECT delivery_id FROM batch_ids)
GROUP BY delivery_id, school_urn, key_intervention, key_outcome_measure, key_round
