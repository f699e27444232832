-- Record what a withdrawal covers (change_sets.Withdrawn; NULL: every trial, every round).
INSERT INTO withdrawal_scopes (school_urn, key_intervention, key_round) VALUES ($urn, $intervention, $round)
