-- The current registry's rounds, by intervention then start date.
SELECT * FROM registry_rounds ORDER BY intervention, start_date, line
