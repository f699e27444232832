-- Record the fingerprint of the pupil key now in use (a new version; earlier ones stay as history).
INSERT INTO pupil_key_fingerprint (version, fingerprint, sample_key)
SELECT coalesce(max(version), 0) + 1, $fingerprint, $sample FROM pupil_key_fingerprint
