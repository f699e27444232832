-- Of the files named in $files, those whose content was applied (its latest record, `latest_deliveries`) and
-- none of whose (school, trial key)s holds its rows any more: the latest change set of every one of them is
-- another file's ('replaced') or a withdrawal ('withdrawn' when all are). An unchanged file in the folder
-- is then "replaced by a later file" or "withdrawn", never "unchanged since it was last loaded".
WITH mine AS (
    SELECT DISTINCT l.file_name, c.school_urn, c.key_intervention, c.key_outcome_measure, c.key_round
    FROM latest_deliveries AS l
    JOIN change_sets AS c ON c.delivery_id = l.delivery_id AND c.file_name = l.file_name
    WHERE c.state IN ('applied', 'accepted') AND list_contains($files, l.file_name)
), latest AS (
    SELECT school_urn, key_intervention, key_outcome_measure, key_round,
           arg_max(state, recorded_at) AS state, arg_max(file_name, recorded_at) AS file_name
    FROM change_sets
    WHERE state IN ('applied', 'accepted', 'withdrawn')
    GROUP BY school_urn, key_intervention, key_outcome_measure, key_round
)
SELECT m.file_name, CASE WHEN bool_and(t.state = 'withdrawn') THEN 'withdrawn' ELSE 'replaced' END AS superseded
FROM mine AS m
JOIN latest AS t ON t.school_urn = m.school_urn AND t.key_intervention = m.key_intervention
    AND t.key_outcome_measure = m.key_outcome_measure AND coalesce(t.key_round, '') = coalesce(m.key_round, '')
GROUP BY m.file_name
HAVING bool_and(t.state = 'withdrawn' OR t.file_name <> m.file_name)
ORDER BY m.file_name
