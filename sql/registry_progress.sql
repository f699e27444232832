-- Per registered round: schools planned, delivered and awaited (URNs), and its status.
SELECT * FROM registry_progress ORDER BY intervention, start_date, "round"
