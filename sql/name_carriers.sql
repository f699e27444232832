-- Who carries each delivered name: pupils per (name, school), for the publication gate (microtrials.publish.gate).
SELECT 'trial' AS origin, intervention AS name, school_urn, count(*) AS pupils FROM pupils GROUP BY ALL
UNION ALL
SELECT 'outcome' AS origin, outcome_measure AS name, school_urn, count(*) AS pupils FROM pupils GROUP BY ALL
UNION ALL
SELECT 'round' AS origin, round AS name, school_urn, count(*) AS pupils FROM pupils WHERE round IS NOT NULL GROUP BY ALL
