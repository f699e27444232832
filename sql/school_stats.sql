-- Per-school sufficient statistics for one trial's linear mixed model: n and the 21 sums of
-- products of the columns [1, arm, baseline, fsm, arm*fsm, outcome] (s_one_one = n).
-- arm: 'intervention' = 1, 'control' = 0; fsm: TRUE = 1, FALSE = 0 (NULL counts as 0 unless
-- $need_fsm or $fsm_only excludes those rows); baseline is 0 when $use_baseline is false.
-- Rows with NULL outcome are never analysed.
WITH analysed AS (
    SELECT
        school_urn,
        CASE WHEN arm = 'intervention' THEN 1.0 ELSE 0.0 END AS a,
        CASE WHEN $use_baseline THEN baseline ELSE 0.0 END AS b,
        CASE WHEN fsm THEN 1.0 ELSE 0.0 END AS f,
        outcome AS y
    FROM pupils
    WHERE intervention = $intervention
      AND outcome_measure = $outcome_measure
      AND outcome IS NOT NULL
      AND (NOT $use_baseline OR baseline IS NOT NULL)
      AND (NOT $fsm_only OR fsm)
      AND (NOT $need_fsm OR fsm IS NOT NULL)
),
cols AS (
    SELECT school_urn, a, b, f, a * f AS af, y FROM analysed
)
SELECT
    school_urn,
    count(*)        AS n,
    count(*)::DOUBLE AS s_one_one,
    sum(a)          AS s_one_arm,
    sum(b)          AS s_one_baseline,
    sum(f)          AS s_one_fsm,
    sum(af)         AS s_one_armfsm,
    sum(y)          AS s_one_y,
    sum(a * a)      AS s_arm_arm,
    sum(a * b)      AS s_arm_baseline,
    sum(a * f)      AS s_arm_fsm,
    sum(a * af)     AS s_arm_armfsm,
    sum(a * y)      AS s_arm_y,
    sum(b * b)      AS s_baseline_baseline,
    sum(b * f)      AS s_baseline_fsm,
    sum(b * af)     AS s_baseline_armfsm,
    sum(b * y)      AS s_baseline_y,
    sum(f * f)      AS s_fsm_fsm,
    sum(f * af)     AS s_fsm_armfsm,
    sum(f * y)      AS s_fsm_y,
    sum(af * af)    AS s_armfsm_armfsm,
    sum(af * y)     AS s_armfsm_y,
    sum(y * y)      AS s_y_y
FROM cols
GROUP BY school_urn
ORDER BY school_urn
