-- Rebuild the trial_spellings table (which delivered spellings were analysed as which trial) from `frame_to_save`.
CREATE OR REPLACE TABLE trial_spellings AS SELECT * FROM frame_to_save
