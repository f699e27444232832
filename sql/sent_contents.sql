-- The (school, trial key)s each of these contents (registered frame `batch_ids`: delivery_id, the file's
-- sha256) was delivered for (applied, accepted or held): change_sets.sent_before_withdrawal.
SELECT DISTINCT delivery_id, school_urn, key_intervention, key_outcome_measure, key_round
FROM change_sets
WHERE state IN ('applied', 'accepted', 'held') AND delivery_id IN (SELECT delivery_id FROM batch_ids)
