"""The planner: PowerUpR's published MDES examples, design parameters from earlier results, plan text."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from microtrials.publish import site
from microtrials.stats import planner
from microtrials.stats.effect_sizes import months_progress
from microtrials.stats.evidence import mdes_rating

# PowerUpR cross-checks vignette (inst/doc/cross_checks.html, PowerUpR 1.0.x; the same call is in
# man/bira2.Rd of 1.1.0 as mdes.bira2): printed "MDES is 0.366 95% CI [0.107,0.625] with 80% power,
# Degrees of freedom:19, Standardized standard error:0.124" for mdes.bira2r1(rho2=.17, omega2=.50, n=15, J=20);
# mdes.bira2f1(n=15, J=20): "MDES is 0.325 95% CI [0.097,0.552]", df 260, SSE 0.115;
# mdes.bira2c1(n=15, J=20): "MDES is 0.325 95% CI [0.097,0.552]", df 279, SSE 0.115.
POWERUPR_EXAMPLES = [
    (dict(rho2=0.17, omega2=0.50, n=15, J=20), 0.366, 0.107, 0.625, 19, 0.124),
    (dict(n=15, J=20, blocks="fixed"), 0.325, 0.097, 0.552, 260, 0.115),
    (dict(n=15, J=20, blocks="constant"), 0.325, 0.097, 0.552, 279, 0.115),
]


@pytest.mark.parametrize("args,mdes,low,high,df,sse", POWERUPR_EXAMPLES)
def test_mdes_matches_powerupr_published_examples(args, mdes, low, high, df, sse):
    result = planner.mdes_bira2(**args)
    assert result.mdes == pytest.approx(mdes, abs=0.005)
    assert result.ci_low == pytest.approx(low, abs=0.005)
    assert result.ci_high == pytest.approx(high, abs=0.005)
    assert result.df == df
    assert result.sse == pytest.approx(sse, abs=0.0005)


def test_power_matches_powerupr_values_quoted_in_a_cross_check():
    # Values of PowerUpR::power.bira2 quoted in another package's tests ("Verifying with PowerUpR"):
    # power.bira2(es=.3, rho2=.2, omega2=0, n=10, J=30) = .8016; (es=.2, rho2=.2, omega2=.5, n=20, J=50) = .776.
    assert planner.power_bira2(0.3, n=10, J=30, rho2=0.2, omega2=0.0) == pytest.approx(0.8016, abs=0.0005)
    assert planner.power_bira2(0.2, n=20, J=50, rho2=0.2, omega2=0.5) == pytest.approx(0.776, abs=0.0005)
    # and the published MDES has 80% power by construction
    assert planner.power_bira2(0.36559, n=15, J=20, rho2=0.17, omega2=0.5) == pytest.approx(0.80, abs=0.001)


def test_mdes_by_hand_formula():
    # Independent arithmetic: J=10, n=40, rho2=.2, r21=.5: SSE = sqrt(.8*.5/(.25*400)) = .06325, df 9.
    sse = math.sqrt(0.8 * 0.5 / (0.25 * 10 * 40))
    m = 2.262157 + 0.883457  # qt(.975, 9) + qt(.80, 9)
    assert planner.mdes_bira2(40, 10, rho2=0.2, r21=0.5).mdes == pytest.approx(m * sse, abs=1e-5)


def test_design_parameters_prefer_earlier_rounds_then_outcome_then_defaults():
    results = pd.DataFrame([
        # intervention, outcome, round, var_school_u, var_pupil_u, var_pupil, beta, pupils, attrition
        ["Reciprocal reading", "NGRT", "2025 Autumn", 30.0, 170.0, 90.0, 4.0, 100, 8.0],
        ["Reciprocal reading", "NGRT", "2026 Spring", 20.0, 180.0, 100.0, 2.0, 300, 4.0],
        ["Reciprocal reading", "NGRT", "all rounds", 99.0, 1.0, 0.5, 0.0, 400, 50.0],  # cumulative row ignored
        ["Maths mastery", "PUMA", "", 10.0, 190.0, 120.0, 0.0, 200, 6.0],
    ], columns=["intervention", "outcome_measure", "round", "var_school_unconditional",
                "var_pupil_unconditional", "var_pupil", "beta", "pupils_analysed", "attrition_pct"])
    own = planner.design_parameters(results, "reciprocal  Reading", "NGRT")
    rho = np.average([30 / 200, 20 / 200], weights=[100, 300])
    r21 = np.average([1 - (90 + 4) / 170, 1 - (100 + 1) / 180], weights=[100, 300])
    assert own.rho2 == pytest.approx(rho) and own.r21 == pytest.approx(r21)
    assert own.attrition_pct == pytest.approx(5.0)
    assert "2 earlier rounds of reciprocal  Reading" in own.source
    same_outcome = planner.design_parameters(results, "New thing", "puma")
    assert same_outcome.rho2 == pytest.approx(10 / 200) and "1 trial on puma" in same_outcome.source
    fallback = planner.design_parameters(results, "New thing", "Writing")
    assert (fallback.rho2, fallback.r21) == (planner.DEFAULT_RHO2, planner.DEFAULT_R21)
    assert planner.design_parameters(None, "x").source.startswith("defaults")


def test_plan_strength_and_schools_needed_are_consistent():
    params = planner.DesignParameters(rho2=0.15, r21=0.4, attrition_pct=5.0, source="test")
    plan = planner.plan("Reciprocal reading", 8, 50, params)
    n = 50 * 0.95
    assert plan.mdes.mdes == pytest.approx(planner.mdes_bira2(n, 8, 0.15, 0.0, 0.4).mdes)
    assert plan.strength.score == min(5, mdes_rating(plan.mdes.mdes))  # 8 schools: no deduction; attrition 5% -> 5
    for target, needed in ((4, plan.schools_for_4), (5, plan.schools_for_5)):
        assert planner.planned_strength(planner.mdes_bira2(n, needed, 0.15, 0.0, 0.4).mdes, needed, 5.0).score >= target
        assert planner.planned_strength(planner.mdes_bira2(n, needed - 1, 0.15, 0.0, 0.4).mdes, needed - 1, 5.0).score < target
    assert plan.schools_for_4 <= plan.schools_for_5


def test_strength_5_unreachable_with_high_attrition_is_said():
    params = planner.DesignParameters(rho2=0.15, r21=0.4, attrition_pct=25.0, source="test")
    plan = planner.plan("X", 10, 60, params)
    assert plan.schools_for_4 is None and plan.schools_for_5 is None
    text = planner.plan_text(plan)
    assert "strength 5: not reachable with 60 pupils per school" in text


def test_plan_text_speaks_plain_words_first_then_statistics():
    plan = planner.plan("Reading", 8, 25, planner.default_parameters())
    first, *rest = planner.plan_text(plan).splitlines()
    months = months_progress(plan.mdes.mdes)
    assert first.startswith(f"With 8 schools of 25 pupils you could detect an effect of about {months} months")
    assert plan.strength.score < 4 and f"for 4 padlocks you would need about {plan.schools_for_4} schools" in first
    assert "MDES" not in first and "ICC" not in first and "For statisticians:" in rest
    # the schools it names do reach 4 padlocks, one fewer does not
    for schools, reaches in ((plan.schools_for_4, True), (plan.schools_for_4 - 1, False)):
        assert (planner.plan("Reading", schools, 25, planner.default_parameters()).strength.score >= 4) is reaches


def test_plan_text_says_mdes_months_strength_and_source():
    plan = planner.plan("Reciprocal reading", 12, 60, planner.default_parameters())
    text = planner.plan_text(plan)
    assert f"{plan.mdes.mdes:.2f} SD" in text and "80% power at 5% two-sided" in text
    assert f"Evidence strength it would earn: {plan.strength.score} of 5" in text
    assert f"strength 4: {plan.schools_for_4} schools" in text and "defaults (ICC 0.15" in text


def test_too_few_schools_is_an_error_an_officer_can_act_on():
    with pytest.raises(planner.MicrotrialsError, match="at least 2 schools"):
        planner.plan("X", 1, 30, planner.default_parameters())


def test_plan_for_uses_the_registry_name_and_earlier_rounds():
    from microtrials.ingest.registry import read_registry

    registry = read_registry(
        b"intervention,outcome_measure,round,start_date,schools,aliases\r\n"
        b"Reciprocal reading,NGRT,2025,2025-09-01,111101 111102,RR\r\n"
        b"Reciprocal reading,NGRT,2026,2026-09-01,111101 111102 111103 111104,RR\r\n")
    results = pd.DataFrame([["Reciprocal reading", "NGRT", "2025", 30.0, 170.0, 90.0, 4.0, 2, 110, 100, 8.0]],
                           columns=["intervention", "outcome_measure", "round", "var_school_unconditional",
                                    "var_pupil_unconditional", "var_pupil", "beta", "schools", "pupils_randomised",
                                    "pupils_analysed", "attrition_pct"])
    plan = planner.plan_for("rr", 10, None, results, registry)
    assert plan.intervention == "Reciprocal reading" and plan.pupils_per_school == 55  # 110 pupils / 2 schools
    assert plan.parameters.rho2 == pytest.approx(30 / 200) and "1 earlier round" in plan.parameters.source
    pending = planner.round_plans(registry, results)
    assert list(pending) == [("reciprocal reading", "2026")]  # the 2025 round has results
    assert pending[("reciprocal reading", "2026")].schools == 4
    # results stored before rounds existed (no round column) count for every round of the intervention
    assert planner.round_plans(registry, results.drop(columns="round")) == {}
    # a row with no pupils analysed is not a result: that round still gets a plan
    assert list(planner.round_plans(registry, results.assign(pupils_analysed=0))) == [
        ("reciprocal reading", "2025"), ("reciprocal reading", "2026")]
    # a round whose count disclosure control blanked (a small group) has results: no "Next round ... (no results
    # yet)" for it (red team: the page said so of a round with results)
    blanked = site.with_published_counts(results, results.assign(pupils_analysed=None, pupils_randomised=None))
    assert blanked["pupils_analysed"].isna().all()
    assert list(planner.round_plans(registry, blanked)) == [("reciprocal reading", "2026")]
    page = planner.plans_for_page(pending, registry)
    assert page == [{"intervention": "Reciprocal reading", "round": "2026", "outcome_measure": "NGRT",
                     "text": planner.plan_summary(pending[("reciprocal reading", "2026")])}]
    assert page[0]["text"].startswith("With 4 schools of 55 pupils you could detect an effect of about ")
    assert "evidence strength" in page[0]["text"]


def test_plan_from_an_empty_warehouse_uses_defaults(tmp_path):
    from microtrials.ingest import warehouse

    con = warehouse.connect(tmp_path / "w.duckdb")
    text = planner.plan_from_warehouse(con, "Reading", 10, 40)
    assert text.startswith("With 10 schools of 40 pupils") and "\nPlan for Reading: 10 schools x 40 pupils" in text and "defaults (ICC 0.15" in text
