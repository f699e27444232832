"""Jobs: load school partitions and refresh what depends on them; refresh only. Both run in one process."""

from __future__ import annotations

import dagster as dg

# Each writer is followed by the observation of the warehouse tables it writes (pipelines/tables.py).
LOADING = dg.AssetSelection.assets("pupils", "deliveries", "change_sets", "quarantine", "load_report", "load_warnings")
DOWNSTREAM = dg.AssetSelection.assets("registry", "trial_results", "school_results", "exploratory_results",
                                      "registry_messages", "registry_progress", "staged_publication",
                                      "evidence_table")

# Dagster's documented run tags for a run over a range of partitions (what a backfill with a
# single-run policy sets): the school partitions from START to END, in partition order.
PARTITION_RANGE_START = "dagster/asset_partition_range_start"
PARTITION_RANGE_END = "dagster/asset_partition_range_end"

def partition_range_tags(first: str, last: str) -> dict[str, str]:
    """Run tags that make one run load the school partitions ``first`` .. ``last``."""
    return {PARTITION_RANGE_START: first, PARTITION_RANGE_END: last}


# Every step of a run in the run's own process, whoever starts it (`microtrials run`, the sensor, the
# schedules, the UI): a one-school update is a few seconds of work, and a subprocess per step
# (Dagster's default multiprocess executor) costs more than the work, and the writing steps take the
# `warehouse` pool one at a time anyway. MICROTRIALS_EXECUTOR, which once offered a process per step,
# is gone: `microtrials run` executes in its own process whatever a job says, so it was a choice that
# path could not keep.
#
# Load the partitions named by the run (one school, or a range via the partition-range tags)
# and then refresh trial_results and evidence_table, with their checks, in the same run.
load_and_refresh = dg.define_asset_job(
    "load_and_refresh",
    selection=LOADING | DOWNSTREAM,
    executor_def=dg.in_process_executor,
    description="Load the chosen school partitions of `pupils`, then refresh `trial_results` and "
    "`evidence_table` (all schools).",
)

refresh = dg.define_asset_job(
    "refresh",
    selection=DOWNSTREAM,
    executor_def=dg.in_process_executor,
    description="Refit every trial from the warehouse and republish the evidence table.",
)

ALL_JOBS = [load_and_refresh, refresh]
