-- Every pseudonymised pupil key in the warehouse (to prove none is published).
SELECT DISTINCT pupil_key FROM pupils
