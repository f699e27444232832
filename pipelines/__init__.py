"""Dagster definitions for microtrials: wiring only, the work is in the microtrials library."""
