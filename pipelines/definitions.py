"""The code location: every asset, check, job, schedule and sensor of microtrials."""

from __future__ import annotations

import datetime as dt

import dagster as dg

from pipelines.assets.loading import pupils
from pipelines.assets.publishing import evidence_table, staged_publication
from pipelines.assets.registry import REGISTRY_CHECKS, registry
from pipelines.assets.trials import trial_results
from pipelines.checks import ALL_CHECKS
from pipelines.jobs import ALL_JOBS
from pipelines.launch import LOGGERS
from pipelines.resources import default_resources
from pipelines.schedules import ALL_SCHEDULES, TIMEZONE
from pipelines.sensors import ALL_SENSORS
from pipelines.tables import ALL_TABLE_ASSETS

# The evidence table is promised weekly (`weekly_refresh`, Mondays 06:00 UK time): by 09:00 each
# Monday it must have been republished within the last 7 days, else the UI marks it overdue
# (Dagster's freshness daemon, on by default since 1.12, evaluates the policy).
EVIDENCE_FRESHNESS = dg.FreshnessPolicy.cron(
    deadline_cron="0 9 * * 1", lower_bound_delta=dt.timedelta(days=7), timezone=TIMEZONE
)

[evidence_table_weekly] = dg.map_asset_specs(
    lambda spec: dg.apply_freshness_policy(spec, EVIDENCE_FRESHNESS), [evidence_table]
)
ALL_ASSETS = [pupils, registry, trial_results, staged_publication, evidence_table_weekly, *ALL_TABLE_ASSETS]

defs = dg.Definitions(
    assets=ALL_ASSETS,
    asset_checks=[*ALL_CHECKS, *REGISTRY_CHECKS],
    jobs=ALL_JOBS,
    schedules=ALL_SCHEDULES,
    sensors=ALL_SENSORS,
    resources=default_resources(),
    loggers=LOGGERS,
)
