-- The stored evidence-table rows, in the contract's order of rows: intervention, outcome_measure,
-- then round by start_date with the cumulative row ("all rounds") last.
SELECT * FROM trial_results ORDER BY intervention, outcome_measure, round_order NULLS FIRST
