-- The stored trial results (evidence row plus the figures behind it).
SELECT * FROM trial_results ORDER BY intervention, outcome_measure
