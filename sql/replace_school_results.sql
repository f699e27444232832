-- Rebuild the school_results table from the registered frame `frame_to_save`.
CREATE OR REPLACE TABLE school_results AS SELECT * FROM frame_to_save
