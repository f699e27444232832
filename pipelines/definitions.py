"""The code location: every asset, check, job, schedule and sensor of microtrials."""

from __future__ import annotations

import dagster as dg

from pipelines.assets.loading import pupils
from pipelines.assets.publishing import evidence_table
from pipelines.assets.trials import trial_results
from pipelines.checks import ALL_CHECKS
from pipelines.jobs import ALL_JOBS
from pipelines.resources import default_resources
from pipelines.schedules import ALL_SCHEDULES
from pipelines.sensors import ALL_SENSORS

ALL_ASSETS = [pupils, trial_results, evidence_table]

defs = dg.Definitions(
    assets=ALL_ASSETS,
    asset_checks=ALL_CHECKS,
    jobs=ALL_JOBS,
    schedules=ALL_SCHEDULES,
    sensors=ALL_SENSORS,
    resources=default_resources(),
)
