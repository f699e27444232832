-- 1 when a registry version with this content hash is kept, else 0.
SELECT count(*) FROM registry_versions WHERE sha256 = $sha256
