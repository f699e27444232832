"""The headline figures on the shared reference extracts match lme4 (expected.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from microtrials import loading, warehouse
from microtrials.evidence_table import evidence_table
from microtrials.trials import analyse_trial

REFERENCE = Path(__file__).resolve().parent / "fixtures" / "reference"
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
    contract = (Path(__file__).resolve().parents[1] / "docs" / "extract-format.md").read_text()
    section = contract.split("## 2. The evidence table")[1]
    names = []
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| column") and not line.startswith("|---"):
            names += [n.strip() for n in line.split("|")[1].split(",")]
    table = evidence_table(list(results.values()))
    assert list(table.columns[: len(names)]) == names
    assert list(table["intervention"]) == sorted(table["intervention"])


@pytest.mark.parametrize("trial", sorted(EXPECTED))
def test_random_slope_model_matches_lme4(results, trial):
    expected = EXPECTED[trial]["ancova_random_slope"]
    slope = results[trial].random_slope
    assert slope.params["arm"] == pytest.approx(expected["beta"], rel=0.005)
    assert slope.bse["arm"] == pytest.approx(expected["se"], rel=0.02)
    assert slope.sd_slope == pytest.approx(expected["sd_slope"], rel=0.02)


@pytest.mark.parametrize("trial", sorted(EXPECTED))
def test_effect_sizes_match_reference(results, trial):
    expected = EXPECTED[trial]["ancova_random_intercept"]
    result = results[trial]
    assert abs(result.headline.g - expected["g_total"]) <= 0.0005
    assert abs(result.within.g - expected["g_within"]) <= 0.0005


HETEROGENEITY = {t["intervention"]: t for t in json.loads((REFERENCE / "heterogeneity.json").read_text())}


@pytest.mark.parametrize("trial", sorted(HETEROGENEITY))
def test_per_school_ancova_effects_match_metafor(results, trial):
    """Per-school lm(outcome ~ arm + baseline) arm effect and variance over the total SD: within 1e-6."""
    expected = {s["school_urn"]: s for s in HETEROGENEITY[trial]["per_school"]}
    ours = results[trial].per_school.dropna(subset=["g"]).set_index("school_urn")
    assert sorted(ours.index) == sorted(expected)
    for urn, school in expected.items():
        assert abs(ours.loc[urn, "g"] - school["d"]) <= 1e-6
        assert abs(ours.loc[urn, "var"] - school["v"]) <= 1e-6
        assert ours.loc[urn, "n_intervention"] == school["n_intervention"]
        assert ours.loc[urn, "n_control"] == school["n_control"]


@pytest.mark.parametrize("trial", sorted(HETEROGENEITY))
def test_heterogeneity_matches_metafor_t(results, trial):
    """rma(yi, vi, method="REML", test="t"), predict and blup: tau, CI, PI, p_new within 0.001, I2 within 0.1."""
    expected = HETEROGENEITY[trial]
    result = results[trial]
    pool = result.pool
    assert result.sd_total == pytest.approx(expected["sd_total"], rel=1e-6)
    assert pool.k == expected["k"] and pool.df == expected["df"]
    assert abs(pool.i2 - expected["I2"]) <= 0.1
    for ours, theirs in [
        (pool.mu, expected["mu"]), (pool.se, expected["se"]), (pool.tau, expected["tau"]),
        (pool.ci_low, expected["ci"][0]), (pool.ci_high, expected["ci"][1]),
        (pool.pi_low, expected["prediction_interval"][0]), (pool.pi_high, expected["prediction_interval"][1]),
        (pool.p_new_positive, expected["p_new_school_benefits"]),
    ]:
        assert abs(ours - theirs) <= 0.001
    eb = result.per_school.set_index("school_urn")["eb_g"]
    for school in expected["per_school"]:
        assert abs(eb[school["school_urn"]] - school["blup"]) <= 0.001
    row = evidence_table([result]).iloc[0]
    assert abs(row["tau"] - expected["tau"]) <= 0.001
    assert abs(row["p_new_school_benefits"] - expected["p_new_school_benefits"]) <= 0.001
    assert row["status"] == "published"


@pytest.mark.parametrize("trial", sorted(EXPECTED))
def test_fsm_models_match_lme4(results, trial):
    result = results[trial]
    only = EXPECTED[trial]["fsm_only"]
    assert result.fsm_model.n_obs == only["pupils"]
    assert result.fsm_model.params["arm"] == pytest.approx(only["beta"], rel=0.005)
    interaction = EXPECTED[trial]["fsm_interaction"]
    assert result.interaction.params["arm:fsm"] == pytest.approx(interaction["beta_t_fsm"], rel=0.005)


def test_one_arm_school_counts_but_is_not_pooled(results):
    reading = results["Reciprocal reading"]
    assert reading.schools - reading.schools_both_arms == 1
    assert reading.pool.k == reading.schools_both_arms
    assert any("only one arm" in note for note in reading.notes)
    one_arm = reading.per_school[reading.per_school["note"].str.startswith("one arm only")]
    assert len(one_arm) == 1 and one_arm["g"].isna().all() and one_arm["eb_g"].isna().all()
    n = int(one_arm["n_intervention"].iloc[0] or one_arm["n_control"].iloc[0])
    assert f"({n} pupils in" in one_arm["note"].iloc[0]


def test_fsm_months_follow_the_toolkit_table(results):
    # Reciprocal reading's FSM-only effect: beta 2.689 (lme4) over the headline total SD
    # sqrt(52.79 + 193.06) = 15.680 gives 0.171, which the Toolkit table puts at 2 months.
    row = evidence_table(list(results.values())).set_index("intervention").loc["Reciprocal reading"]
    expected = EXPECTED["Reciprocal reading"]
    sd_total = (expected["null_model"]["var_school"] + expected["null_model"]["var_pupil"]) ** 0.5
    assert abs(row["fsm_effect_size"] - expected["fsm_only"]["beta"] / sd_total) <= 0.0005
    assert row["fsm_months_progress"] == 2
