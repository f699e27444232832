-- The stored evidence-table rows, in the contract's order of rows.
SELECT * FROM trial_results ORDER BY intervention, outcome_measure
