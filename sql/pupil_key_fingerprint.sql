-- The fingerprint of the pupil key the warehouse's pupils are keyed by (the latest recorded).
SELECT fingerprint, sample_key FROM pupil_key_fingerprint ORDER BY version DESC LIMIT 1
