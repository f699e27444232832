"""Effect sizes against lme4/metafor figures (expected.json), the EEF example and hand calculations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from microtrials.stats.effect_sizes import (
    hedges_g,
    hedges_g_total,
    hedges_g_within,
    months_progress,
    school_hedges_g,
    small_sample_correction,
    wald_p_value,
)

SHARED = Path(__file__).resolve().parent / "fixtures"
REFERENCE = SHARED / "reference"
EXPECTED = json.loads((REFERENCE / "expected.json").read_text())
TRIALS = sorted(EXPECTED)


def _read_extracts(folder: Path) -> pd.DataFrame:
    frames = [pd.read_csv(path, dtype={"school_urn": str}) for path in sorted(folder.glob("*.csv"))]
    pupils = pd.concat(frames, ignore_index=True)
    pupils["arm"] = (pupils["arm"].str.lower() == "intervention").astype(int)
    return pupils


@pytest.fixture(scope="module")
def reference_pupils() -> pd.DataFrame:
    return _read_extracts(REFERENCE / "extracts")


# --- months of progress (EEF Toolkit table, hand-checked band edges) ---------------------------

@pytest.mark.parametrize(
    ("g", "months"),
    [
        (0.0, 0), (0.01, 0), (0.014, 0), (0.015, 1), (0.02, 1), (0.09, 1), (0.10, 2), (0.18, 2),
        (0.19, 3), (0.26, 3), (0.27, 4), (0.35, 4), (0.36, 5), (0.44, 5), (0.45, 6), (0.52, 6),
        (0.53, 7), (0.61, 7), (0.62, 8), (0.69, 8), (0.70, 9), (0.78, 9), (0.79, 10), (0.87, 10),
        (0.88, 11), (0.95, 11), (0.954, 11), (0.955, 12), (0.96, 12), (1.5, 12),
        (-0.01, 0), (-0.02, -1), (-0.18, -2), (-0.19, -3), (-0.96, -12),
        (0.21423590146, 3), (0.088178004321, 1),  # the two reference trials' g_total
    ],
)
def test_months_progress_table(g, months):
    assert months_progress(g) == months


def test_months_progress_nan_is_none():
    assert months_progress(float("nan")) is None
    assert months_progress(None) is None


# --- g from the mixed model -------------------------------------------------------------------

@pytest.mark.parametrize("trial", TRIALS)
def test_g_total_and_within_match_lme4(trial):
    fixed = EXPECTED[trial]["ancova_random_intercept"]
    null = EXPECTED[trial]["null_model"]
    total = hedges_g_total(fixed["beta"], fixed["se"], null["var_school"], null["var_pupil"])
    within = hedges_g_within(fixed["beta"], fixed["se"], null["var_pupil"])
    assert abs(total.g - fixed["g_total"]) <= 0.0005
    assert abs(within.g - fixed["g_within"]) <= 0.0005


def test_g_within_uses_unconditional_pupil_variance():
    """The reference g_within is beta / sqrt(unconditional var_pupil), not the conditional one."""
    ref = EXPECTED["Reciprocal reading"]
    fixed = ref["ancova_random_intercept"]
    conditional = hedges_g_within(fixed["beta"], fixed["se"], fixed["var_pupil"])
    assert abs(conditional.g - 0.24175793201) > 0.04


def test_effect_size_ci_by_hand():
    # beta 3, SE 1, total variance 64 + 36 = 100 -> SD 10: g 0.3, CI (3 -/+ 1.96) / 10
    es = hedges_g_total(3.0, 1.0, 64.0, 36.0)
    assert es.sd == pytest.approx(10.0)
    assert es.g == pytest.approx(0.3)
    assert es.ci_low == pytest.approx(0.10400360, abs=1e-6)
    assert es.ci_high == pytest.approx(0.49599640, abs=1e-6)
    assert es.months_progress == 4


def test_wald_p_value_by_hand():
    assert wald_p_value(1.96, 1.0) == pytest.approx(0.04999579, abs=1e-7)
    assert wald_p_value(-2.0, 1.0) == pytest.approx(0.04550026, abs=1e-7)


def test_eef_multisite_example_onestage_g_total():
    """eefAnalytics' mstData: onestage g_total 0.2692 and mstFREQ uncond_within 0.36 (expected.txt)."""
    from microtrials.stats.models import fit_mixedlm

    pupils = _read_extracts(SHARED / "reference-eef" / "extracts").dropna(subset=["outcome", "baseline"])
    null = fit_mixedlm(pupils, [])
    assert abs(hedges_g_total(3.5572, 1.2300, null.var_school, null.var_pupil).g - 0.2692) <= 0.0005
    assert round(hedges_g_within(3.64, 1.0, null.var_pupil).g, 2) == 0.36


# --- per-school Hedges' g (metafor escalc SMD) ------------------------------------------------

def test_small_sample_correction_by_hand():
    # J(m) = Gamma(m/2) / (sqrt(m/2) Gamma((m-1)/2)); J(2) = Gamma(1) / Gamma(1/2) = 1 / sqrt(pi)
    assert float(small_sample_correction(2)) == pytest.approx(1 / math.sqrt(math.pi))
    # close to Hedges' approximation 1 - 3 / (4m - 1) for larger m
    assert float(small_sample_correction(38)) == pytest.approx(1 - 3 / (4 * 38 - 1), abs=1e-4)


def test_hedges_g_by_hand():
    # means 105 and 100, SDs 10 and 10, n 20 and 20: d = 0.5, J(38) = 0.980094, g = 0.490047
    g, var = hedges_g(np.array([105.0]), np.array([100.0]), np.array([10.0]), np.array([10.0]),
                      np.array([20]), np.array([20]))
    j = math.exp(math.lgamma(19) - 0.5 * math.log(19) - math.lgamma(18.5))
    assert g[0] == pytest.approx(0.5 * j)
    assert var[0] == pytest.approx(40 / 400 + (0.5 * j) ** 2 / 80)


@pytest.mark.parametrize("trial", TRIALS)
def test_school_hedges_g_matches_metafor(reference_pupils, trial):
    analysed = reference_pupils[reference_pupils["intervention"] == trial].dropna(subset=["outcome", "baseline"])
    ours = school_hedges_g(analysed[["school_urn", "arm", "outcome"]]).set_index("school_urn")
    expected = pd.DataFrame(EXPECTED[trial]["two_stage"]["per_school"]).set_index("school_urn")
    assert list(ours.index) == list(expected.index)
    assert len(ours) == EXPECTED[trial]["two_stage"]["k"]
    assert np.max(np.abs(ours["g"] - expected["g"])) <= 0.0005
    assert np.max(np.abs(ours["var"] - expected["var"])) <= 0.0005
    half = 1.959963984540054 * np.sqrt(expected["var"])
    assert np.max(np.abs(ours["ci_low"] - (expected["g"] - half))) <= 0.0005
    assert np.max(np.abs(ours["ci_high"] - (expected["g"] + half))) <= 0.0005


def test_school_hedges_g_needs_two_pupils_per_arm():
    pupils = pd.DataFrame({
        "school_urn": ["100001"] * 4 + ["100002"] * 3,
        "arm": [1, 1, 0, 0, 1, 0, 0],
        "outcome": [5.0, 7.0, 4.0, 6.0, 5.0, 4.0, 6.0],
    })
    out = school_hedges_g(pupils)
    assert list(out["school_urn"]) == ["100001"]
    # means 6 and 5, both SDs sqrt(2): d = 1 / sqrt(2), J(2) = 1 / sqrt(pi)
    assert out["g"].iloc[0] == pytest.approx(1 / math.sqrt(2) / math.sqrt(math.pi))
    assert (out["n_intervention"].iloc[0], out["n_control"].iloc[0]) == (2, 2)


def test_school_without_outcome_variation_is_left_out():
    pupils = pd.DataFrame({"school_urn": ["100001"] * 4, "arm": [1, 1, 0, 0], "outcome": [3.0, 3.0, 3.0, 3.0]})
    assert school_hedges_g(pupils).empty
