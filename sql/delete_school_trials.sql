-- Remove the pupil rows the applied change sets (or a withdrawal) replace (registered frame `batch_replace`: the stored
-- school_urn, intervention, outcome_measure, round combinations whose trial key a delivery carries).
-- Rows of a (school, trial, round) the delivery does not carry, or whose change set is held, stay.
DELETE FROM pupils
WHERE EXISTS (
    SELECT 1 FROM batch_replace AS t
    WHERE t.school_urn = pupils.school_urn
      AND t.intervention = pupils.intervention
      AND t.outcome_measure = pupils.outcome_measure
      AND coalesce(t."round", '') = coalesce(pupils."round", '')
)
