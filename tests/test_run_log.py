"""The run's Dagster log: the demo's deliberately unregistered trial is a demonstration (INFO); in a workspace it is a WARNING."""

from __future__ import annotations

import logging

import dagster as dg
import pytest

from microtrials import summary
from microtrials.ingest import loading, warehouse
from tests.conftest import TEST_PUPIL_KEY


@pytest.mark.slow
def test_the_demo_s_unregistered_trial_is_info_in_the_demo_and_a_warning_in_a_workspace(tmp_path):
    from pipelines.assets.trials import trial_results
    from pipelines.resources import DEFAULT_EXTRACTS, Settings, Warehouse

    db = tmp_path / "warehouse.duckdb"
    with warehouse.connect(db) as con:
        loading.load_folder(con, DEFAULT_EXTRACTS, TEST_PUPIL_KEY.encode())
    said = {}
    with dg.instance_for_test() as instance:
        for where, workspace_dir in (("demo", ""), ("workspace", str(tmp_path))):
            settings = Settings(extracts_dir=str(DEFAULT_EXTRACTS), out_dir=str(tmp_path / "out"),
                                workspace_dir=workspace_dir)
            assert settings.demo is (where == "demo")
            result = dg.materialize([trial_results], instance=instance,
                                    resources={"settings": settings, "warehouse_db": Warehouse(database=str(db))})
            assert result.success
            said[where] = [(e.level, e.user_message) for e in instance.all_logs(result.run_id)
                           if summary.DEMO_UNREGISTERED in (e.user_message or "")
                           and "unregistered, not published" not in e.user_message]  # not the analysis line
    demonstration = summary.demonstration("unregistered", summary.DEMO_UNREGISTERED, demo=True)
    assert said["demo"] == [(logging.INFO, demonstration)]
    [(level, text)] = said["workspace"]
    assert level == logging.WARNING and text.startswith(f"'{summary.DEMO_UNREGISTERED}' is not in the registry")
