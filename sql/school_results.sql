-- Each school's own result per trial row (before small-group suppression, which publishing applies).
SELECT * FROM school_results ORDER BY intervention, outcome_measure, "round" NULLS FIRST, school_urn, school_round
