-- Clear the current registry's rounds before the new version's rows are inserted.
DELETE FROM registry_rounds
