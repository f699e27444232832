-- Every delivered (intervention, outcome_measure) spelling with its number of pupil rows; the
-- statistics group spellings into trials with microtrials.ingest.names.match_key.
SELECT intervention, outcome_measure, count(*) AS rows
FROM pupils
GROUP BY intervention, outcome_measure
ORDER BY intervention, outcome_measure
