-- The schools withdrawn (microtrials withdraw) and not delivered again since: URN per trial key, with when,
-- for the history's "withdrawn" (a school that left is never "no longer counted"), the plan's progress, and
-- the loader, which holds any later file carrying rows for one of them until accepted (change_sets.withdrawals).
SELECT w.school_urn, w.key_intervention, w.key_outcome_measure, w.key_round, w.recorded_at AS withdrawn_at
FROM change_sets AS w
WHERE w.state = 'withdrawn'
  AND NOT EXISTS (
    SELECT 1 FROM change_sets AS later
    WHERE later.school_urn = w.school_urn AND later.key_intervention = w.key_intervention
      AND later.key_outcome_measure = w.key_outcome_measure AND later.key_round = w.key_round
      AND later.state IN ('applied', 'accepted') AND later.recorded_at > w.recorded_at
  )
