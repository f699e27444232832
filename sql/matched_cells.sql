-- Per-school cell sums of one trial (or one trial round): one row per (school, arm, fsm, outcome
-- known, baseline known) with the pupil count and the sums of baseline b and outcome y, b^2, y^2
-- and b*y. Every figure the statistics need (counts, attrition by arm, baseline balance, the
-- per-school ANCOVA and the sufficient statistics X'X, X'y, y'y of any model whose design columns
-- are functions of arm, fsm, "baseline missing" and baseline) is a sum over these cells
-- (microtrials.stats.reml.stats_from_cells), so no pupil row leaves DuckDB.
-- b and y are summed about their means over the chosen rows (outcome_centre, baseline_centre, the
-- same on every row), so scores with a large common offset (+10,000,000) keep their precision.
-- $keys holds the delivered combinations to take: intervention, outcome_measure, school_urn and
-- round (blank when none was sent) joined by the unit separator chr(31) (microtrials.stats.units.combo_key),
-- so a school's rows of another round or of an unregistered spelling never enter.
-- arm 'intervention' = 1, 'control' = 0; fsm TRUE = 1, FALSE = 0, NULL unknown. Sums over no values are 0.
WITH wanted AS (SELECT unnest($keys) AS key),
chosen AS (
    SELECT school_urn, arm, fsm, outcome, baseline
    FROM pupils
    WHERE concat_ws(chr(31), intervention, outcome_measure, school_urn, coalesce("round", '')) IN (SELECT key FROM wanted)
),
centre AS (
    SELECT coalesce(avg(outcome), 0.0) AS outcome_centre, coalesce(avg(baseline), 0.0) AS baseline_centre FROM chosen
)
SELECT
    school_urn,
    CASE WHEN arm = 'intervention' THEN 1.0 ELSE 0.0 END AS arm,
    CASE WHEN fsm IS NULL THEN NULL WHEN fsm THEN 1.0 ELSE 0.0 END AS fsm,
    outcome IS NOT NULL AS has_outcome,
    baseline IS NOT NULL AS has_baseline,
    count(*) AS n,
    coalesce(sum(baseline - baseline_centre), 0.0) AS sum_b,
    coalesce(sum((baseline - baseline_centre) * (baseline - baseline_centre)), 0.0) AS sum_bb,
    coalesce(sum(outcome - outcome_centre), 0.0) AS sum_y,
    coalesce(sum((outcome - outcome_centre) * (outcome - outcome_centre)), 0.0) AS sum_yy,
    coalesce(sum((baseline - baseline_centre) * (outcome - outcome_centre)), 0.0) AS sum_by,
    any_value(outcome_centre) AS outcome_centre,
    any_value(baseline_centre) AS baseline_centre
FROM chosen CROSS JOIN centre
GROUP BY ALL
ORDER BY school_urn, arm, fsm NULLS LAST, has_outcome, has_baseline
