-- The interventions the warehouse has results for (as stored).
SELECT DISTINCT intervention FROM trial_results ORDER BY intervention
