-- Every delivered (intervention, outcome_measure, school_urn, round) as spelt, with its rows, the
-- rows that have an outcome and when its first file was loaded: the input of
-- microtrials.ingest.registry.match_deliveries (which decides the trial each combination belongs to).
SELECT
    p.intervention,
    p.outcome_measure,
    p.school_urn,
    p."round" AS "round",
    count(*) AS rows,
    count(p.outcome) AS with_outcome,
    min(d.loaded_at) AS first_loaded_at
FROM pupils AS p
LEFT JOIN deliveries AS d ON d.delivery_id = p.delivery_id
GROUP BY ALL
ORDER BY p.intervention, p.outcome_measure, p.school_urn, "round" NULLS FIRST
