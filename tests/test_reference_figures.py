"""The headline figures on the shared reference extracts match lme4 (expected.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from microtrials import loading, warehouse
from microtrials.evidence_table import evidence_table
from microtrials.trials import analyse_trial

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
EXPECTED = json.loads((REFERENCE / "expected.json").read_text())
KEY = b"reference-test-key"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    db = tmp_path_factory.mktemp("ref") / "warehouse.duckdb"
    with warehouse.connect(db) as con:
        reports = loading.load_folder(con, REFERENCE / "extracts", KEY)
        assert all(r.status == "loaded" for r in reports)
        rows = con.execute(warehouse.sql("trial_pupils")).df()
    return {name: analyse_trial(group) for (name, _), group in rows.groupby(["intervention", "outcome_measure"])}


@pytest.mark.parametrize("trial", sorted(EXPECTED))
def test_primary_model_matches_lme4(results, trial):
    expected = EXPECTED[trial]["ancova_random_intercept"]
    fit = results[trial].primary
    assert fit.params["arm"] == pytest.approx(expected["beta"], rel=0.001)
    assert fit.bse["arm"] == pytest.approx(expected["se"], rel=0.005)


@pytest.mark.parametrize("trial", sorted(EXPECTED))
def test_evidence_table_matches_reference(results, trial):
    table = evidence_table(list(results.values())).set_index("intervention")
    row = table.loc[trial]
    expected = EXPECTED[trial]
    assert row["outcome_measure"] == expected["outcome_measure"]
    assert abs(row["effect_size"] - expected["ancova_random_intercept"]["g_total"]) <= 0.0005
    assert row["pupils_randomised"] == expected["pupils_randomised"]
    assert row["pupils_analysed"] == expected["pupils_analysed"]
    assert row["schools"] == expected["schools"]
    assert row["schools_both_arms"] == expected["schools_with_both_arms"]


def test_evidence_table_has_contract_columns_in_order(results):
    contract = (REFERENCE.parent / "extract-format.md").read_text()
    section = contract.split("## 2. The evidence table")[1]
    names = []
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| column") and not line.startswith("|---"):
            names += [n.strip() for n in line.split("|")[1].split(",")]
    table = evidence_table(list(results.values()))
    assert list(table.columns[: len(names)]) == names
    assert list(table["intervention"]) == sorted(table["intervention"])
