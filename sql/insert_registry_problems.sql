-- The current registry's bad rows from the registered frame `registry_problems_frame`.
INSERT INTO registry_problems BY NAME SELECT * FROM registry_problems_frame
