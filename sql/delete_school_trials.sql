-- Remove a school's pupil rows for the trials in the registered frame `delivery_trials`
-- (a re-delivery replaces exactly those trials; the school's other trials stay).
DELETE FROM pupils
WHERE school_urn = $school_urn
  AND EXISTS (
      SELECT 1 FROM delivery_trials AS t
      WHERE t.intervention = pupils.intervention AND t.outcome_measure = pupils.outcome_measure
  )
