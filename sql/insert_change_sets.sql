-- Record change sets (registered frame `batch_change_sets`: microtrials.ingest.change_sets.change_sets_table).
INSERT INTO change_sets BY NAME SELECT * FROM batch_change_sets
