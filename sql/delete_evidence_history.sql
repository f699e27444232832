-- Remove one publication's history rows (so re-appending the same publication is idempotent).
DELETE FROM evidence_history WHERE publication_id = $publication_id
