-- When each (school, trial round) last had a change set applied or accepted (any outcome measure), for the
-- schools ever withdrawn: a withdrawal recorded before it no longer holds that trial round's files
-- (change_sets.withdrawals).
SELECT school_urn, key_intervention, key_round, max(recorded_at) AS applied_at
FROM change_sets
WHERE state IN ('applied', 'accepted')
  AND school_urn IN (SELECT school_urn FROM withdrawal_scopes UNION SELECT school_urn FROM change_sets
                     WHERE state = 'withdrawn')
GROUP BY school_urn, key_intervention, key_round
