-- Delivered spellings analysed as another spelling of the same trial (table trial_spellings,
-- merged true): the load report page lists them for published trials.
SELECT intervention, outcome_measure, delivered_intervention, delivered_outcome_measure, merged
FROM trial_spellings
WHERE merged
ORDER BY intervention, outcome_measure, delivered_intervention, delivered_outcome_measure
