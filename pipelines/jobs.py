"""Jobs: load school partitions and refresh what depends on them; refresh only."""

from __future__ import annotations

import dagster as dg

LOADING = dg.AssetSelection.assets("pupils")
DOWNSTREAM = dg.AssetSelection.assets("trial_results", "evidence_table")

# Load the partitions named by the run (one school, or a range via the partition-range tags)
# and then refresh trial_results and evidence_table, with their checks, in the same run.
load_and_refresh = dg.define_asset_job(
    "load_and_refresh",
    selection=LOADING | DOWNSTREAM,
    description="Load the chosen school partitions of `pupils`, then refresh `trial_results` and "
    "`evidence_table` (all schools).",
)

refresh = dg.define_asset_job(
    "refresh",
    selection=DOWNSTREAM,
    description="Refit every trial from the warehouse and republish the evidence table.",
)

ALL_JOBS = [load_and_refresh, refresh]
