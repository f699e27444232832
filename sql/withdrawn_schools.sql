-- The schools withdrawn (microtrials withdraw) and not delivered again since: URN per trial key,
-- for the history's "withdrawn" (a school that left is never "no longer counted"), and for the loader,
-- which holds a file whose very content was sent for one of them before (change_sets.withdrawn_copies).
SELECT w.school_urn, w.key_intervention, w.key_outcome_measure, w.key_round
FROM change_sets AS w
WHERE w.state = 'withdrawn'
  AND NOT EXISTS (
    SELECT 1 FROM change_sets AS later
    WHERE later.school_urn = w.school_urn AND later.key_intervention = w.key_intervention
      AND later.key_outcome_measure = w.key_outcome_measure AND later.key_round = w.key_round
      AND later.state IN ('applied', 'accepted') AND later.recorded_at > w.recorded_at
  )
