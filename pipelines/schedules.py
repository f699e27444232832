"""Schedules: a weekly refit and republish, and a termly reload of every school."""

from __future__ import annotations

import dagster as dg
from pipelines.jobs import load_and_refresh, partition_range_tags, refresh
from pipelines.partitions import SCHOOLS

TIMEZONE = "Europe/London"

# Mondays 06:00 UK time, before the school day: refit every trial and republish.
weekly_refresh = dg.ScheduleDefinition(
    name="weekly_refresh",
    job=refresh,
    cron_schedule="0 6 * * 1",
    execution_timezone=TIMEZONE,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every Monday 06:00 Europe/London: refresh trial_results and evidence_table.",
)

# Start of each school term (1 September, 1 January, 20 April) at 05:00 UK time.
TERM_STARTS = ["0 5 1 9 *", "0 5 1 1 *", "0 5 20 4 *"]


@dg.schedule(
    name="termly_full_reload",
    target=load_and_refresh,
    cron_schedule=TERM_STARTS,
    execution_timezone=TIMEZONE,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="1 Sep, 1 Jan and 20 Apr at 05:00 Europe/London: reload every registered school "
    "partition in one run, then refresh trial_results and evidence_table.",
)
def termly_full_reload(context: dg.ScheduleEvaluationContext):
    schools = list(context.instance.get_dynamic_partitions(SCHOOLS))
    if not schools:
        return dg.SkipReason("no school partitions registered yet (the extracts sensor adds them)")
    return dg.RunRequest(
        run_key=f"termly-{context.scheduled_execution_time:%Y-%m-%d}",
        tags=partition_range_tags(schools[0], schools[-1]),
    )


ALL_SCHEDULES = [weekly_refresh, termly_full_reload]
