-- Every published row, oldest publication first.
SELECT publication_id, published_at, intervention, outcome_measure, round, row_json
FROM evidence_history ORDER BY published_at, publication_id, intervention, outcome_measure, round
