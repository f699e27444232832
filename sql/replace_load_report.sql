-- Rebuild the load_report table from the registered frame `frame_to_save`.
CREATE OR REPLACE TABLE load_report AS SELECT * FROM frame_to_save
