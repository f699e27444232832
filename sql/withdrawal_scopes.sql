-- Every withdrawal's scope (microtrials withdraw), with when: the rows of `withdrawal_scopes` (NULL
-- key_intervention: every trial; NULL key_round: every round), and the trial round of each withdrawn change
-- set (every outcome measure of it; a warehouse written before scopes were recorded has only these).
-- change_sets.withdrawals sets them against the trial rounds applied or accepted since (sql/rounds_applied.sql).
SELECT school_urn, key_intervention, key_round, recorded_at FROM withdrawal_scopes
UNION ALL
SELECT school_urn, key_intervention, key_round, recorded_at FROM change_sets WHERE state = 'withdrawn'
