-- Who carries each delivered name: each (name, school, pupil) once, for the publication gate
-- (microtrials.publish.gate counts distinct pupils per name's match key and school: a name typed on ten rows
-- of one pupil is carried by one pupil).
SELECT DISTINCT 'trial' AS origin, intervention AS name, school_urn, pupil_key FROM pupils
UNION ALL
SELECT DISTINCT 'outcome' AS origin, outcome_measure AS name, school_urn, pupil_key FROM pupils
UNION ALL
SELECT DISTINCT 'round' AS origin, round AS name, school_urn, pupil_key FROM pupils WHERE round IS NOT NULL
