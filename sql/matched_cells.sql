-- Per-school cell sums (as sql/school_stats.sql) of the pupils of one trial round: the delivered
-- combinations that matching assigned to it. $keys holds each combination as
-- intervention, outcome_measure, school_urn and round (blank when none was sent) joined by the
-- unit separator chr(31) (microtrials.units.combo_key), so a school's rows of another round or
-- of an unregistered spelling never enter.
WITH wanted AS (SELECT unnest($keys) AS key)
SELECT
    school_urn,
    CASE WHEN arm = 'intervention' THEN 1.0 ELSE 0.0 END AS arm,
    CASE WHEN fsm IS NULL THEN NULL WHEN fsm THEN 1.0 ELSE 0.0 END AS fsm,
    outcome IS NOT NULL AS has_outcome,
    baseline IS NOT NULL AS has_baseline,
    count(*) AS n,
    coalesce(sum(baseline), 0.0) AS sum_b,
    coalesce(sum(baseline * baseline), 0.0) AS sum_bb,
    coalesce(sum(outcome), 0.0) AS sum_y,
    coalesce(sum(outcome * outcome), 0.0) AS sum_yy,
    coalesce(sum(baseline * outcome), 0.0) AS sum_by
FROM pupils
WHERE concat_ws(chr(31), intervention, outcome_measure, school_urn, coalesce("round", '')) IN (SELECT key FROM wanted)
GROUP BY ALL
ORDER BY school_urn, arm, fsm NULLS LAST, has_outcome, has_baseline
