-- Exploratory outcomes and unregistered interventions, analysed for evaluators only.
SELECT * FROM exploratory_results ORDER BY intervention, outcome_measure, round_order NULLS FIRST
