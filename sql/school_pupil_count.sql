-- Pupil rows held for the given schools.
SELECT count(*) FROM pupils WHERE list_contains($urns, school_urn)
