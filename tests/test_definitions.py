"""The Dagster definitions load, and one materialisation publishes the evidence table."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from tests.conftest import SHARED


def test_definitions_load():
    from pipelines.definitions import defs

    dg.Definitions.validate_loadable(defs)
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"pupils", "trial_results", "evidence_table"} <= keys


def test_load_and_refresh_publishes_evidence_table(tmp_path: Path):
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    from pipelines.definitions import defs
    from pipelines.partitions import SCHOOLS, files_by_school
    from pipelines.resources import Settings, Warehouse

    extracts = tmp_path / "extracts"
    shutil.copytree(SHARED / "reference" / "extracts", extracts)
    out = tmp_path / "published"
    resources = {
        "settings": Settings(extracts_dir=str(extracts), out_dir=str(out)),
        "warehouse_db": Warehouse(db_path=str(tmp_path / "warehouse.duckdb")),
    }
    schools = sorted(files_by_school(extracts))
    assert len(schools) == 25
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(SCHOOLS, schools)
        tags = {ASSET_PARTITION_RANGE_START_TAG: schools[0], ASSET_PARTITION_RANGE_END_TAG: schools[-1]}
        result = _run_job(defs, resources, instance, tags)
    assert result.success
    table = pd.read_csv(out / "evidence_table.csv")
    assert sorted(table["intervention"]) == ["Maths mastery", "Reciprocal reading"]
    reading = table.loc[table["intervention"] == "Reciprocal reading", "effect_size"].item()
    assert reading == pytest.approx(0.21424, abs=0.0005)
    assert not list(out.glob("*.tmp*")), "no temp files left behind"


def _run_job(defs, resources, instance, tags):
    """The load_and_refresh job with test resources in place of the environment's."""
    job_defs = dg.Definitions(
        assets=list(defs.assets), asset_checks=list(defs.asset_checks or []), jobs=list(defs.jobs), resources=resources
    )
    job = job_defs.resolve_job_def("load_and_refresh")
    return job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
