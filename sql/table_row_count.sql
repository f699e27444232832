-- Rows in the table named by $name (one of the warehouse's own tables).
SELECT count(*) FROM query_table($name)
