-- Pupils and schools per trial in the warehouse.
SELECT
    intervention,
    outcome_measure,
    count(*) AS pupils,
    count(DISTINCT school_urn) AS schools
FROM pupils
GROUP BY intervention, outcome_measure
ORDER BY intervention, outcome_measure
