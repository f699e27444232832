-- Clear the current registry's problems before the new version's are inserted.
DELETE FROM registry_problems
