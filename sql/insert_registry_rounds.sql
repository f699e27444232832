-- The current registry's rounds from the registered frame `registry_rounds_frame`.
INSERT INTO registry_rounds BY NAME SELECT * FROM registry_rounds_frame
