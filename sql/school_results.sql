-- Each school's own result per trial (before small-group suppression, which publishing applies).
SELECT * FROM school_results ORDER BY intervention, outcome_measure, school_urn
