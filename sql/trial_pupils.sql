-- Every delivered pupil row the statistics need, one trial after another. No pupil key leaves here.
SELECT
    intervention,
    outcome_measure,
    school_urn,
    CASE WHEN arm = 'intervention' THEN 1.0 ELSE 0.0 END AS arm,
    outcome,
    baseline,
    CASE WHEN fsm IS NULL THEN NULL WHEN fsm THEN 1.0 ELSE 0.0 END AS fsm
FROM pupils
ORDER BY intervention, outcome_measure, school_urn, pupil_key
