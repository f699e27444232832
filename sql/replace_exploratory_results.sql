-- Rebuild the exploratory_results table (exploratory outcomes and unregistered interventions, analysed for evaluators only (never published)) from `frame_to_save`.
CREATE OR REPLACE TABLE exploratory_results AS SELECT * FROM frame_to_save
