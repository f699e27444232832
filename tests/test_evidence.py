"""MDES, baseline balance, attrition and evidence strength against hand-worked figures."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from microtrials.errors import MicrotrialsError
from microtrials.stats.evidence import (
    BALANCE_ADJUSTED,
    BALANCE_FINE,
    BALANCE_NOT_COMPARABLE,
    attrition_by_arm,
    attrition_pct,
    attrition_rating,
    baseline_balance,
    evidence_strength,
    mdes,
    mdes_rating,
    wwc_balance_flag,
)


# --- MDES -------------------------------------------------------------------------------------

def test_mdes_normal_multiplier_by_hand():
    # (1.959964 + 0.841621) = 2.801585; SE 1, SD 14 -> 0.200113
    assert mdes(1.0, 14.0) == pytest.approx(2.801585 / 14.0, abs=1e-6)
    assert mdes(1.0, 1.0) == pytest.approx(2.8016, abs=1e-4)


def test_mdes_t_multiplier_by_hand():
    # df = 10: t_{0.975} = 2.228139, t_{0.80} = 0.879058 -> 3.107197
    assert mdes(0.5, 2.0, df=10) == pytest.approx(3.107197 * 0.25, abs=1e-6)


def test_mdes_reference_trial_by_hand():
    # Reciprocal reading: SE 0.679419, total SD sqrt(52.78987 + 193.06149) = 15.67966
    # MDES = 2.801585 * 0.679419 / 15.67966 = 0.12140
    assert mdes(0.67941850369, math.sqrt(52.7898699377 + 193.061489469)) == pytest.approx(0.12140, abs=5e-5)


def test_mdes_other_alpha_power():
    # alpha 0.10, power 0.90: 1.644854 + 1.281552 = 2.926405
    assert mdes(1.0, 1.0, alpha=0.10, power=0.90) == pytest.approx(2.926405, abs=1e-6)


# --- baseline balance -------------------------------------------------------------------------

def test_baseline_balance_by_hand():
    # intervention baselines 10, 12, 14 (mean 12, var 4); control 9, 11, 13 (mean 11, var 4)
    # pooled SD 2; omega = 1 - 3 / (4*6 - 9) = 0.8; d = 0.8 * (12 - 11) / 2 = 0.4
    pupils = pd.DataFrame({"arm": [1, 1, 1, 0, 0, 0, 0], "baseline": [10, 12, 14, 9, 11, 13, None]})
    balance = baseline_balance(pupils)
    assert balance.sd_pooled == pytest.approx(2.0)
    assert balance.difference == pytest.approx(0.4)
    assert (balance.n_intervention, balance.n_control) == (3, 3)
    assert balance.flag == BALANCE_NOT_COMPARABLE


def test_baseline_balance_pooled_sd_unequal_arms():
    # intervention 0, 2, 4, 6 (mean 3, var 20/3); control 1, 3 (mean 2, var 2)
    # s_pooled^2 = (3 * 20/3 + 1 * 2) / 4 = 5.5; omega = 1 - 3 / 15 = 0.8; d = 0.8 / sqrt(5.5)
    pupils = pd.DataFrame({"arm": [1, 1, 1, 1, 0, 0], "baseline": [0, 2, 4, 6, 1, 3]})
    balance = baseline_balance(pupils)
    assert balance.difference == pytest.approx(0.8 / math.sqrt(5.5))
    assert balance.flag == BALANCE_NOT_COMPARABLE


def test_baseline_balance_needs_both_arms():
    with pytest.raises(MicrotrialsError):
        baseline_balance(pd.DataFrame({"arm": [1, 1], "baseline": [1.0, 2.0]}))


@pytest.mark.parametrize(
    ("difference", "flag"),
    [(0.0, BALANCE_FINE), (0.05, BALANCE_FINE), (-0.05, BALANCE_FINE), (0.051, BALANCE_ADJUSTED),
     (-0.2, BALANCE_ADJUSTED), (0.25, BALANCE_ADJUSTED), (0.26, BALANCE_NOT_COMPARABLE),
     (-0.3, BALANCE_NOT_COMPARABLE)],
)
def test_wwc_balance_flag(difference, flag):
    assert wwc_balance_flag(difference) == flag


# --- attrition --------------------------------------------------------------------------------

def test_attrition_reference_trial_by_hand():
    # Reciprocal reading: 1293 randomised, 1172 analysed -> 121 / 1293 = 9.358%
    assert attrition_pct(1293, 1172) == pytest.approx(9.3580820, abs=1e-6)


def test_attrition_by_arm_by_hand():
    # intervention: 10 randomised, 8 analysed (20%); control: 10 randomised, 9 analysed (10%)
    randomised = pd.Series([1] * 10 + [0] * 10)
    analysed = pd.Series([1] * 8 + [0] * 9)
    attrition = attrition_by_arm(randomised, analysed)
    assert attrition.overall == pytest.approx(15.0)
    assert attrition.intervention == pytest.approx(20.0)
    assert attrition.control == pytest.approx(10.0)
    assert attrition.differential == pytest.approx(10.0)


def test_attrition_with_nobody_randomised_is_nan():
    assert math.isnan(attrition_pct(0, 0))


# --- ratings and evidence strength ------------------------------------------------------------

@pytest.mark.parametrize(
    ("value", "rating"),
    [(0.1, 5), (0.2, 5), (0.21, 4), (0.3, 4), (0.35, 3), (0.4, 3), (0.45, 2), (0.5, 2), (0.55, 1),
     (0.6, 1), (0.61, 0), (float("nan"), 0)],
)
def test_mdes_rating(value, rating):
    assert mdes_rating(value) == rating


@pytest.mark.parametrize(
    ("pct", "rating"),
    [(0.0, 5), (10.0, 5), (10.1, 4), (20.0, 4), (25.0, 3), (30.0, 3), (35.0, 2), (40.0, 2),
     (45.0, 1), (50.0, 1), (50.1, 0)],
)
def test_attrition_rating(pct, rating):
    assert attrition_rating(pct) == rating


def test_evidence_strength_all_five():
    result = evidence_strength(mdes_value=0.12, attrition=9.4, baseline_difference=0.02, schools_both_arms=23)
    assert result.score == 5
    assert "set by the design, the MDES and attrition" in result.reasons[0]
    assert len(result.reasons) == 1


def test_evidence_strength_set_by_mdes():
    # MDES 0.35 -> 3; attrition 15% -> 4; design 5: min = 3, set by the MDES
    result = evidence_strength(mdes_value=0.35, attrition=15.0, baseline_difference=0.01, schools_both_arms=12)
    assert result.score == 3
    assert result.reasons[0].startswith("3 of 5")
    assert result.reasons[0].endswith("set by the MDES")


def test_evidence_strength_set_by_attrition_with_imbalance_deduction():
    # attrition 35% -> 2; MDES 0.15 -> 5: min 2; baseline 0.10 SD > 0.05 -> -1: score 1
    result = evidence_strength(mdes_value=0.15, attrition=35.0, baseline_difference=-0.10, schools_both_arms=8)
    assert result.score == 1
    assert result.reasons[0].endswith("set by attrition")
    assert any("differed at baseline by 0.100 SD" in r for r in result.reasons)


def test_evidence_strength_both_deductions():
    # min(5, MDES 0.25 -> 4, attrition 5% -> 5) = 4; -1 imbalance (0.06 SD); -1 only 3 schools with both arms: 2
    result = evidence_strength(mdes_value=0.25, attrition=5.0, baseline_difference=0.06, schools_both_arms=3)
    assert result.score == 2
    assert any("only 3 schools had pupils in both arms" in r for r in result.reasons)
    assert len(result.reasons) == 3


def test_evidence_strength_floor_at_zero():
    # MDES 0.7 -> 0; both deductions would take it to -2: floored at 0
    result = evidence_strength(mdes_value=0.7, attrition=60.0, baseline_difference=0.3, schools_both_arms=1)
    assert result.score == 0
    assert result.reasons[-1] == "floored at 0"
    assert "only 1 school had" in result.reasons[-2]


def test_evidence_strength_no_baseline_no_deduction():
    result = evidence_strength(mdes_value=0.18, attrition=8.0, baseline_difference=None, schools_both_arms=6)
    assert result.score == 5
    assert any("could not be checked" in r for r in result.reasons)


def test_evidence_strength_exact_thresholds_no_deduction():
    # 0.05 SD is not "above 0.05"; 5 schools is not "fewer than 5"
    result = evidence_strength(mdes_value=0.2, attrition=10.0, baseline_difference=0.05, schools_both_arms=5)
    assert result.score == 5


def test_balance_from_summaries_by_hand():
    from microtrials.stats.evidence import balance_from_summaries

    # n 10 / 12, means 100.5 / 100, variances 16 / 9: s_pooled^2 = (9*16 + 11*9) / 20 = 12.15,
    # omega = 1 - 3 / (4*22 - 9) = 1 - 3/79; d = omega * 0.5 / sqrt(12.15) = 0.138.
    balance = balance_from_summaries(10, 100.5, 16.0, 12, 100.0, 9.0)
    assert balance.difference == pytest.approx((1 - 3 / 79) * 0.5 / math.sqrt(12.15))
    assert balance.flag == "needs statistical adjustment (made: baseline is in the model)"


def test_attrition_from_counts_by_hand():
    from microtrials.stats.evidence import attrition_from_counts

    a = attrition_from_counts((50, 50), (45, 40))
    assert (a.overall, a.intervention, a.control) == pytest.approx((15.0, 10.0, 20.0))
