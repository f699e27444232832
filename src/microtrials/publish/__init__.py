"""The publication: tables, pages, plots, workbooks, history and disclosure control."""
