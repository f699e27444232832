-- Every registry version read, oldest first.
SELECT sha256, read_at, path, encoding, rounds, problems, content FROM registry_versions ORDER BY read_at, sha256
