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


def test_the_pupils_asset_lists_every_column_of_the_warehouse_table(tmp_path: Path):
    """The `pupils` asset's column metadata lacked `round` and `key_round`: it is checked against the
    table the schema really creates (names and types, in order)."""
    from microtrials.ingest import warehouse
    from pipelines.assets.loading import PUPILS_SCHEMA

    with warehouse.connect(tmp_path / "w.duckdb") as con:
        columns = con.execute("SELECT column_name, data_type FROM information_schema.columns "
                              "WHERE table_name = 'pupils' ORDER BY ordinal_position").fetchall()
    assert [(c.name, c.type) for c in PUPILS_SCHEMA.columns] == columns
    assert all(c.description for c in PUPILS_SCHEMA.columns if c.name in ("round", "key_round"))


def test_load_and_refresh_publishes_evidence_table(tmp_path: Path):
    from pipelines.definitions import defs
    from pipelines.jobs import partition_range_tags
    from pipelines.partitions import SCHOOLS, files_by_school
    from pipelines.resources import Settings, Warehouse

    extracts = tmp_path / "extracts"
    shutil.copytree(SHARED / "reference" / "extracts", extracts)
    out = tmp_path / "published"
    resources = {
        "settings": Settings(extracts_dir=str(extracts), out_dir=str(out)),
        "warehouse_db": Warehouse(database=str(tmp_path / "warehouse.duckdb")),
    }
    schools = sorted(files_by_school(extracts))
    assert len(schools) == 25
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(SCHOOLS, schools)
        tags = partition_range_tags(schools[0], schools[-1])
        result = _run_job(defs, resources, instance, tags)
    assert result.success
    table = pd.read_csv(out / "evidence_table.csv")
    assert sorted(table["intervention"]) == ["Maths mastery", "Reciprocal reading"]
    reading = table.loc[table["intervention"] == "Reciprocal reading", "effect_size"].item()
    # the multisite headline: lme4's (1 + t | school_urn) beta / the null model's total SD (multisite.json)
    assert reading == pytest.approx(0.206209, abs=0.00005)
    assert not list(out.glob("*.tmp*")), "no temp files left behind"


def _run_job(defs, resources, instance, tags):
    """The load_and_refresh job with test resources in place of the environment's."""
    job_defs = dg.Definitions(
        assets=list(defs.assets), asset_checks=list(defs.asset_checks or []), jobs=list(defs.jobs), resources=resources
    )
    job = job_defs.resolve_job_def("load_and_refresh")
    return job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)


def test_warehouse_tables_are_assets_with_every_column_described(tmp_path: Path):
    """Each table spec lists exactly the warehouse's columns (those that exist yet), each with a description."""
    from microtrials.ingest import warehouse
    from pipelines.definitions import defs
    from pipelines.tables import TABLES, WRITTEN_BY

    specs = {s.key.to_user_string(): s for s in defs.resolve_all_asset_specs()}
    con = warehouse.connect(tmp_path / "w.duckdb")
    try:
        for name in TABLES:
            spec = specs[name]
            assert {d.asset_key.to_user_string() for d in spec.deps} == {WRITTEN_BY[name]}
            columns = {c.name: c for c in spec.metadata["dagster/column_schema"].columns}
            assert all(c.description and len(c.description) > 10 for c in columns.values()), name
            if warehouse.table_exists(con, name):  # schema.sql tables; the derived ones appear after a run
                actual = [row[0] for row in con.execute("DESCRIBE " + name).fetchall()]
                assert set(actual) <= set(columns), f"{name}: undescribed {set(actual) - set(columns)}"
    finally:
        con.close()


def test_evidence_table_must_be_republished_weekly_and_runs_stay_in_one_process():
    from pipelines.definitions import defs

    spec = next(s for s in defs.resolve_all_asset_specs() if s.key == dg.AssetKey("evidence_table"))
    policy = spec.freshness_policy
    assert policy is not None and policy.deadline_cron == "0 9 * * 1" and policy.timezone == "Europe/London"
    assert policy.lower_bound_delta.days == 7
    for name in ("load_and_refresh", "refresh"):
        assert defs.resolve_job_def(name).executor_def.name == "in_process"


@pytest.mark.slow
def test_tables_are_observed_after_their_writer(tmp_path: Path):
    """In load_and_refresh the observation of `deliveries` sees the rows the load just wrote."""
    from pipelines.definitions import defs
    from pipelines.jobs import partition_range_tags
    from pipelines.partitions import SCHOOLS, files_by_school
    from pipelines.resources import Settings, Warehouse

    extracts = tmp_path / "extracts"
    shutil.copytree(SHARED / "reference" / "extracts", extracts)
    resources = {
        "settings": Settings(extracts_dir=str(extracts), out_dir=str(tmp_path / "out")),
        "warehouse_db": Warehouse(database=str(tmp_path / "warehouse.duckdb")),
    }
    schools = sorted(files_by_school(extracts))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(SCHOOLS, schools)
        result = _run_job(defs, resources, instance, partition_range_tags(schools[0], schools[-1]))
    assert result.success
    observed = {
        e.asset_key.to_user_string(): e.event_specific_data.asset_observation.metadata["dagster/row_count"].value
        for e in result.get_asset_observation_events()
    }
    assert observed["deliveries"] == 25  # one row per reference file
    assert observed["school_results"] > 0
