-- Remove the pupil rows each delivered file replaces: its school's rows for the trials it names
-- (registered frame `batch_trials`: file_name, school_urn, intervention, outcome_measure, held).
-- A re-delivery replaces exactly those trials; the school's other trials stay, and so do the
-- trials the delivery may not replace (`held`: sql/redelivery_losses.sql).
DELETE FROM pupils
WHERE EXISTS (
    SELECT 1 FROM batch_trials AS t
    WHERE t.school_urn = pupils.school_urn
      AND t.intervention = pupils.intervention
      AND t.outcome_measure = pupils.outcome_measure
      AND NOT t.held
)
