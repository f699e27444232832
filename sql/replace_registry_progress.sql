-- Rebuild the registry_progress table (per registered round: schools planned, delivered and awaited) from `frame_to_save`.
CREATE OR REPLACE TABLE registry_progress AS SELECT * FROM frame_to_save
