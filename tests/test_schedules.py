"""The schedules: the weekly refresh and the termly reload of every school partition."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import dagster as dg

from pipelines.definitions import defs
from pipelines.jobs import PARTITION_RANGE_END, PARTITION_RANGE_START
from pipelines.partitions import SCHOOLS
from pipelines.schedules import termly_full_reload, weekly_refresh

LONDON = ZoneInfo("Europe/London")


def test_weekly_refresh_runs_the_refresh_job_on_monday_mornings():
    assert weekly_refresh.name == "weekly_refresh"
    assert weekly_refresh.default_status == dg.DefaultScheduleStatus.RUNNING
    assert weekly_refresh.execution_timezone == "Europe/London"
    assert weekly_refresh.cron_schedule == "0 6 * * 1"
    job = defs.resolve_job_def(weekly_refresh.job_name)
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == {
        "registry", "trial_results", "school_results", "exploratory_results", "registry_messages", "registry_progress",
        "staged_publication", "evidence_table"}
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(
            instance=instance, scheduled_execution_time=dt.datetime(2026, 11, 23, 6, tzinfo=LONDON)
        )
        requests = weekly_refresh.evaluate_tick(context).run_requests
    assert len(requests) == 1 and requests[0].partition_key is None


def test_termly_reload_reloads_every_school_in_one_run():
    assert termly_full_reload.default_status == dg.DefaultScheduleStatus.RUNNING
    assert termly_full_reload.execution_timezone == "Europe/London"
    job = defs.resolve_job_def(termly_full_reload.job_name)
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == {
        "pupils", "deliveries", "change_sets", "quarantine", "load_report", "load_warnings", "registry", "trial_results",
        "school_results",
        "exploratory_results", "registry_messages", "registry_progress",
        "staged_publication", "evidence_table"}
    when = dt.datetime(2026, 9, 1, 5, tzinfo=LONDON)
    with dg.instance_for_test() as instance:
        empty = termly_full_reload.evaluate_tick(dg.build_schedule_context(instance=instance, scheduled_execution_time=when))
        assert not empty.run_requests and empty.skip_message
        instance.add_dynamic_partitions(SCHOOLS, ["111601", "111602", "file-broken"])
        result = termly_full_reload.evaluate_tick(
            dg.build_schedule_context(instance=instance, scheduled_execution_time=when)
        )
    [request] = result.run_requests
    assert request.tags[PARTITION_RANGE_START] == "111601"
    assert request.tags[PARTITION_RANGE_END] == "file-broken"
    assert request.run_key == "termly-2026-09-01"


def test_termly_reload_fires_at_the_start_of_each_term():
    """Three cron strings, each once a year at 05:00 (UK time) on the first day of a term."""
    ticks = list(termly_full_reload.cron_schedule)
    # Each cron string fires once a year at 05:00 on its day: minute 0, hour 5, day, month, any weekday.
    fields = sorted((int(c.split()[3]), int(c.split()[2]), int(c.split()[1])) for c in ticks)
    assert fields == [(1, 1, 5), (4, 20, 5), (9, 1, 5)]
    assert all(c.split()[0] == "0" and c.split()[4] == "*" for c in ticks)
