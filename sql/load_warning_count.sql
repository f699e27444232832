-- Warnings recorded for the files named in $files (the files now in the extracts folder).
SELECT count(*) FROM load_warnings WHERE list_contains($files, source_file)
