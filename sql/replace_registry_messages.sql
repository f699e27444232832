-- Rebuild the registry_messages table (what the officer should act on after matching deliveries to the registry) from `frame_to_save`.
CREATE OR REPLACE TABLE registry_messages AS SELECT * FROM frame_to_save
