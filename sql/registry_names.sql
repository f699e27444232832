-- Every registered intervention with its '|'-separated aliases (loading matches re-deliveries by them).
SELECT intervention, aliases FROM registry_rounds
