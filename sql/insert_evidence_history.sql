-- Append one publication's rows from the registered frame `history_frame`.
INSERT INTO evidence_history BY NAME SELECT * FROM history_frame
