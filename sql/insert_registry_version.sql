-- Keep a registry version the first time its exact content is read (an unchanged file adds nothing).
INSERT INTO registry_versions
SELECT $sha256, $read_at, $path, $encoding, $rounds, $problems, $content
WHERE NOT EXISTS (SELECT 1 FROM registry_versions WHERE sha256 = $sha256)
