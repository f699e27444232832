"""The code location: every asset, check, job, schedule and sensor of microtrials."""

from __future__ import annotations

import dagster as dg

from pipelines.assets.loading import pupils
from pipelines.assets.publishing import evidence_table
from pipelines.assets.trials import trial_results
from pipelines.resources import default_resources

ALL_ASSETS = [pupils, trial_results, evidence_table]

defs = dg.Definitions(
    assets=ALL_ASSETS,
    resources=default_resources(),
)
