-- The officer's messages from matching deliveries to the registry, errors first.
SELECT * FROM registry_messages ORDER BY level, rule, intervention, school_urn
