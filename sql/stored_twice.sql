-- Pupils the warehouse may hold twice for one trial, left by the old round bug (issue 19: before rows kept
-- the round their key resolved to, `pupils.key_round`): a row sent without a round and loaded before then
-- (key_round NULL), and a row of the same school and pupil sent with a round. Per school, both spellings of
-- the trial and the round sent; microtrials.ingest.change_sets.stored_twice keeps those of one trial key.
SELECT a.school_urn, a.intervention, a.outcome_measure, b.intervention, b.outcome_measure, b."round",
       count(DISTINCT a.pupil_key) AS pupils
FROM pupils AS a
JOIN pupils AS b ON b.school_urn = a.school_urn AND b.pupil_key = a.pupil_key
WHERE a.key_round IS NULL AND coalesce(a."round", '') = '' AND coalesce(b."round", '') <> ''
GROUP BY ALL
ORDER BY ALL
