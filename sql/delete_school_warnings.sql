-- Remove load warnings the new deliveries supersede (run after the pupils are replaced, before the
-- files' own rows go in): the rows of these very files (`batch_keys`: delivery_id, file_name; they are
-- inserted again), and, from an earlier delivery of a file with the same name (`batch_files`) or of a
-- combination an applied change set replaced (`batch_replace`), the rows whose delivery no longer
-- has pupil rows for that school and trial (a held change set or another round keeps its explanation).
DELETE FROM load_warnings
WHERE EXISTS (
    SELECT 1 FROM batch_keys AS k
    WHERE k.delivery_id = load_warnings.delivery_id AND k.file_name = load_warnings.source_file
)
OR (
    (
        source_file IN (SELECT file_name FROM batch_files)
        OR EXISTS (
            SELECT 1 FROM batch_replace AS t
            WHERE t.school_urn = load_warnings.school_urn
              AND t.intervention = load_warnings.intervention
              AND t.outcome_measure = load_warnings.outcome_measure
        )
    )
    AND NOT EXISTS (
        SELECT 1 FROM pupils AS p
        WHERE p.delivery_id = load_warnings.delivery_id
          AND p.school_urn = load_warnings.school_urn
          AND p.intervention = load_warnings.intervention
          AND p.outcome_measure = load_warnings.outcome_measure
    )
)
