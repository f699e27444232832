-- What placing delivered rows in registered trials and rounds needs from the stored registry
-- (microtrials.ingest.trial_key.from_warehouse): names, aliases, rounds, planned schools, start dates.
SELECT intervention, round, schools, start_date, line, aliases FROM registry_rounds ORDER BY start_date, line
