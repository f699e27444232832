-- Remove a withdrawn school's pupil rows: the stored combinations in the registered frame
-- `batch_replace` (school_urn, intervention, outcome_measure, round), chosen by trial key.
DELETE FROM pupils
WHERE EXISTS (
    SELECT 1 FROM batch_replace AS t
    WHERE t.school_urn = pupils.school_urn
      AND t.intervention = pupils.intervention
      AND t.outcome_measure = pupils.outcome_measure
      AND coalesce(t."round", '') = coalesce(pupils."round", '')
)
