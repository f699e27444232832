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


def test_materialize_publishes_evidence_table(tmp_path: Path):
    from pipelines.definitions import ALL_ASSETS
    from pipelines.resources import Settings, Warehouse

    extracts = tmp_path / "extracts"
    shutil.copytree(SHARED / "reference" / "extracts", extracts)
    out = tmp_path / "published"
    resources = {
        "settings": Settings(extracts_dir=str(extracts), out_dir=str(out)),
        "warehouse_db": Warehouse(db_path=str(tmp_path / "warehouse.duckdb")),
    }
    with dg.instance_for_test() as instance:
        result = dg.materialize(ALL_ASSETS, resources=resources, instance=instance)
    assert result.success
    table = pd.read_csv(out / "evidence_table.csv")
    assert sorted(table["intervention"]) == ["Maths mastery", "Reciprocal reading"]
    reading = table.loc[table["intervention"] == "Reciprocal reading", "effect_size"].item()
    assert reading == pytest.approx(0.21424, abs=0.0005)
    assert not list(out.glob("*.tmp*")), "no temp files left behind"

