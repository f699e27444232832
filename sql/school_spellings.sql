-- The (intervention, outcome_measure) spellings the warehouse holds for the schools of the loaded
-- files (registered frame `batch_trials`); loading matches them to the files' trials with
-- microtrials.names.match_key, so a re-delivery spelled differently replaces, never duplicates.
SELECT DISTINCT p.school_urn, p.intervention, p.outcome_measure
FROM pupils AS p
WHERE p.school_urn IN (SELECT school_urn FROM batch_trials)
ORDER BY p.school_urn, p.intervention, p.outcome_measure
