-- Which of the given 64-hex-digit strings (found in files about to be published) are pupil keys of
-- the warehouse: the check looks up only what the files hold, never loads every key.
SELECT DISTINCT pupil_key FROM pupils WHERE pupil_key IN (SELECT unnest($keys))
