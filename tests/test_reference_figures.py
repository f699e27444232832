"""Every published figure on the shared reference extracts against lme4 and metafor.

expected.json / heterogeneity.json: the network's shared reference (lme4 at its default control,
metafor). multisite.json: lme4 refitted at a tight tolerance, with every published figure computed
from lme4's estimates by the contract's formulas (scripts/r/multisite_reference.R).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from microtrials.ingest import loading
from microtrials.ingest import warehouse
from microtrials.publish.evidence_table import evidence_table
from microtrials.stats.trials import analyse_trial

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REFERENCE = FIXTURES / "reference"
EXPECTED = json.loads((REFERENCE / "expected.json").read_text())
MULTISITE = {folder: json.loads((FIXTURES / folder / "multisite.json").read_text())
             for folder in ("reference", "reference-eef")}
CASES = [(folder, trial) for folder, figures in MULTISITE.items() for trial in sorted(figures) if trial[0] != "_"]
KEY = b"reference-test-key"


def _analyse(folder: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="ref") as tmp, warehouse.connect(Path(tmp) / "warehouse.duckdb") as con:
        reports = loading.load_folder(con, folder / "extracts", KEY)
        assert all(r.status == "loaded" for r in reports)
        rows = con.execute(warehouse.sql("trial_pupils")).df()
    return {name: analyse_trial(group) for (name, _), group in rows.groupby(["intervention", "outcome_measure"])}


@pytest.fixture(scope="module")
def every_result() -> dict:
    return {folder: _analyse(FIXTURES / folder) for folder in MULTISITE}


@pytest.fixture(scope="module")
def results(every_result):
    return every_result["reference"]


@pytest.mark.parametrize("trial", sorted(EXPECTED))
def test_headline_is_lme4_random_slope(results, trial):
    """The headline model is lme4's (1 + t | school_urn) fit of expected.json: beta within 0.01% and SE
    within 0.05% of lme4's default control (which stops up to 2e-5 short), then over the null model's
    total SD."""
    expected = EXPECTED[trial]["ancova_random_slope"]
    result = results[trial]
    fit = result.primary
    assert result.model_choice.startswith("multisite")
    assert fit.formula.endswith("(1 + arm | school), REML")
    assert fit.params["arm"] == pytest.approx(expected["beta"], rel=1e-4)
    assert fit.bse["arm"] == pytest.approx(expected["se"], rel=5e-4)
    null = EXPECTED[trial]["null_model"]
    sd_total = (null["var_school"] + null["var_pupil"]) ** 0.5
    assert result.headline.g == pytest.approx(expected["beta"] / sd_total, rel=1e-4)


@pytest.mark.parametrize(("folder", "trial"), CASES)
def test_every_published_figure_equals_lme4(every_result, folder, trial):
    """effect_size, CI, p, tau, I2, prediction interval, P(new school) and every school's shrunken
    effect against lme4 at a tight tolerance (multisite.json): within 1e-6 (achieved about 3e-8;
    I2, in per cent, within 1e-4, achieved 4e-6); the evidence table carries them rounded to 4 places."""
    expected = MULTISITE[folder][trial]
    result = every_result[folder][trial]
    figures = expected["published"]
    assert result.primary.params["arm"] == pytest.approx(expected["random_slope"]["beta"], rel=1e-6)
    assert result.primary.bse["arm"] == pytest.approx(expected["random_slope"]["se"], rel=1e-6)
    assert result.sd_total == pytest.approx(expected["null_model"]["sd_total"], rel=1e-7)
    ours = {
        "effect_size": result.headline.g, "ci_low": result.headline.ci_low, "ci_high": result.headline.ci_high,
        "p_value": result.p_value, "tau": result.spread.tau, "pi_low": result.spread.pi_low,
        "pi_high": result.spread.pi_high, "p_new_school_benefits": result.spread.p_new_positive,
    }
    for name, value in ours.items():
        assert abs(value - figures[name]) <= 1e-6, name
    assert result.spread.i2 == pytest.approx(figures["i2"], abs=1e-4)
    assert result.spread.k == figures["k"] == result.schools_both_arms
    row = evidence_table([result]).iloc[0]
    for name, value in figures.items():
        if name in ours:
            assert abs(row[name] - value) <= 0.5e-4 + 1e-9, name
    assert abs(row["i2"] - figures["i2"]) <= 0.05 + 1e-9
    shrunken = pd.DataFrame(figures["shrunken"]).set_index("school_urn")["eb_g"]
    eb = result.per_school.set_index("school_urn")["eb_g"]
    both = result.per_school.set_index("school_urn").eval("n_intervention > 0 and n_control > 0")
    assert (eb[both].reindex(shrunken.index) - shrunken).abs().max() <= 1e-6
    assert eb[~both].isna().all()


@pytest.mark.parametrize(("folder", "trial"), CASES)
def test_random_intercept_sensitivity_equals_lme4(every_result, folder, trial):
    """The named sensitivity figure: the random-intercept fit over the same total SD (within 1e-6)."""
    expected = MULTISITE[folder][trial]
    result = every_result[folder][trial]
    ri = expected["random_intercept"]
    assert result.random_intercept.params["arm"] == pytest.approx(ri["beta"], rel=1e-6)
    assert result.random_intercept.bse["arm"] == pytest.approx(ri["se"], rel=1e-6)
    assert result.sensitivity.g == pytest.approx(ri["beta"] / expected["null_model"]["sd_total"], rel=1e-6)


@pytest.mark.parametrize(("folder", "trial"), [c for c in CASES if "fsm_only" in MULTISITE[c[0]][c[1]]])
def test_fsm_effect_equals_lme4(every_result, folder, trial):
    """The FSM-only multisite model over the headline total SD, with its CI (within 1e-6)."""
    expected = MULTISITE[folder][trial]["fsm_only"]
    result = every_result[folder][trial]
    assert result.fsm_pupils == expected["pupils"]
    assert result.fsm_model.params["arm"] == pytest.approx(expected["random_slope"]["beta"], rel=1e-6)
    for ours, theirs in ((result.fsm.g, expected["effect_size"]), (result.fsm.ci_low, expected["ci_low"]),
                         (result.fsm.ci_high, expected["ci_high"])):
        assert abs(ours - theirs) <= 1e-6


@pytest.mark.parametrize("trial", sorted(EXPECTED))
def test_evidence_table_matches_reference(results, trial):
    table = evidence_table(list(results.values())).set_index("intervention")
    row = table.loc[trial]
    expected = EXPECTED[trial]
    assert row["outcome_measure"] == expected["outcome_measure"]
    null = expected["null_model"]
    g = expected["ancova_random_slope"]["beta"] / (null["var_school"] + null["var_pupil"]) ** 0.5
    assert abs(row["effect_size"] - g) <= 0.5e-4 + 2e-6  # rounded to 4 places; lme4's default stops 2e-5 short
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
def test_within_effect_size_matches_reference(results, trial):
    """g_within of the headline beta over the unconditional pupil SD (as mstFREQ's "Unconditional, Within")."""
    null = EXPECTED[trial]["null_model"]
    expected = EXPECTED[trial]["ancova_random_slope"]["beta"] / null["var_pupil"] ** 0.5
    assert results[trial].within.g == pytest.approx(expected, rel=1e-4)


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
def test_two_stage_check_matches_metafor_t(results, trial):
    """The evaluators' two-stage check (never published): rma(yi, vi, method="REML", test="t")."""
    expected = HETEROGENEITY[trial]
    result = results[trial]
    pool = result.pool
    assert result.sd_total == pytest.approx(expected["sd_total"], rel=1e-6)
    assert pool.k == expected["k"] and pool.df == expected["df"]
    assert abs(pool.i2 - expected["I2"]) <= 0.1
    for ours, theirs in [(pool.mu, expected["mu"]), (pool.se, expected["se"]), (pool.tau, expected["tau"]),
                         (pool.ci_low, expected["ci"][0]), (pool.ci_high, expected["ci"][1])]:
        assert abs(ours - theirs) <= 0.001


def test_fsm_interaction_matches_lme4(results):
    for trial in EXPECTED:
        interaction = EXPECTED[trial]["fsm_interaction"]
        assert results[trial].interaction.params["arm:fsm"] == pytest.approx(interaction["beta_t_fsm"], rel=0.005)


def test_one_arm_school_counts_but_has_no_school_figures(results):
    reading = results["Reciprocal reading"]
    assert reading.schools - reading.schools_both_arms == 1
    assert reading.spread.k == reading.schools_both_arms
    assert any("only one arm" in note for note in reading.notes)
    one_arm = reading.per_school[reading.per_school["note"].str.startswith("one arm only")]
    assert len(one_arm) == 1 and one_arm["g"].isna().all() and one_arm["eb_g"].isna().all()
    n = int(one_arm["n_intervention"].iloc[0] or one_arm["n_control"].iloc[0])
    assert f"({n} pupils in" in one_arm["note"].iloc[0]


def test_fsm_months_follow_the_toolkit_table(results):
    # Reciprocal reading's FSM-only multisite effect: beta 2.479 (lme4, multisite.json) over the
    # headline total SD sqrt(52.79 + 193.06) = 15.680 gives 0.158, which the Toolkit table puts at 2 months.
    row = evidence_table(list(results.values())).set_index("intervention").loc["Reciprocal reading"]
    expected = MULTISITE["reference"]["Reciprocal reading"]["fsm_only"]
    assert abs(row["fsm_effect_size"] - expected["effect_size"]) <= 0.5e-4 + 1e-9
    assert row["fsm_months_progress"] == 2
