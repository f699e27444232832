-- Per-school cell sums for one trial: one row per (school, arm, fsm, outcome known, baseline
-- known) with the pupil count and the sums of baseline b and outcome y, b^2, y^2 and b*y.
-- Every figure the statistics need (counts, attrition by arm, baseline balance, the per-school
-- ANCOVA and the sufficient statistics X'X, X'y, y'y of any model whose design columns are
-- functions of arm, fsm, "baseline missing" and baseline) is a sum over these cells
-- (microtrials.reml.stats_from_cells), so no pupil row leaves DuckDB.
-- $interventions and $outcome_measures are the lists of spellings of the trial's two names
-- (microtrials.names.match_key groups them); arm 'intervention' = 1, 'control' = 0;
-- fsm TRUE = 1, FALSE = 0, NULL unknown. Sums over no values are 0, not NULL.
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
WHERE list_contains($interventions, intervention)
  AND list_contains($outcome_measures, outcome_measure)
GROUP BY ALL
ORDER BY school_urn, arm, fsm NULLS LAST, has_outcome, has_baseline
