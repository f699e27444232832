-- Per school and trial: the pupil rows the warehouse holds (for each school partition's own figures).
SELECT school_urn, intervention, outcome_measure, count(*) AS pupils
FROM pupils
WHERE list_contains($urns, school_urn)
GROUP BY school_urn, intervention, outcome_measure
ORDER BY school_urn, intervention, outcome_measure
