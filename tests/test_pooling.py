"""REML random-effects pooling against metafor rma (expected.json two_stage) and hand calculations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from microtrials.errors import MicrotrialsError
from microtrials.stats.pooling import (
    cochran_q,
    i2_statistic,
    knapp_hartung,
    pool_schools,
    prediction_interval,
    random_effects_reml,
    tau2_hedges,
    tau2_reml,
    typical_variance,
)

REFERENCE = Path(__file__).resolve().parent / "fixtures" / "reference"
EXPECTED = json.loads((REFERENCE / "expected.json").read_text())
TRIALS = sorted(EXPECTED)
TOL = 0.001


def _per_school(trial: str) -> pd.DataFrame:
    return pd.DataFrame(EXPECTED[trial]["two_stage"]["per_school"])


@pytest.mark.parametrize("trial", TRIALS)
def test_reml_pooling_matches_metafor(trial):
    expected = EXPECTED[trial]["two_stage"]
    pool = pool_schools(_per_school(trial))
    assert pool.k == expected["k"]
    assert pool.converged
    assert abs(pool.mu - expected["g"]) <= TOL
    assert abs(pool.se - expected["se"]) <= TOL
    assert abs(pool.ci_low - expected["ci"][0]) <= TOL
    assert abs(pool.ci_high - expected["ci"][1]) <= TOL
    assert abs(pool.tau2 - expected["tau2"]) <= TOL
    assert abs(pool.i2 - expected["I2"]) <= TOL
    assert abs(pool.q - expected["Q"]) <= TOL
    assert abs(pool.q_p - expected["Q_p"]) <= TOL
    assert abs(pool.pi_low - expected["prediction_interval"][0]) <= TOL
    assert abs(pool.pi_high - expected["prediction_interval"][1]) <= TOL
    assert abs(pool.knha_ci_low - expected["knapp_hartung_ci"][0]) <= TOL
    assert abs(pool.knha_ci_high - expected["knapp_hartung_ci"][1]) <= TOL


def test_near_boundary_tau2_matches_metafor_closely():
    """Maths mastery: metafor's REML stops at tau2 = 2.34e-6 (not 0); match it, not just within 0.001."""
    expected = EXPECTED["Maths mastery"]["two_stage"]
    pool = pool_schools(_per_school("Maths mastery"))
    assert pool.tau2 == pytest.approx(expected["tau2"], rel=1e-3)
    assert pool.i2 == pytest.approx(expected["I2"], rel=1e-3)


def test_reciprocal_reading_tau2_is_tight():
    expected = EXPECTED["Reciprocal reading"]["two_stage"]
    pool = pool_schools(_per_school("Reciprocal reading"))
    assert pool.tau2 == pytest.approx(expected["tau2"], abs=1e-6)
    assert pool.tau == pytest.approx(math.sqrt(expected["tau2"]), abs=1e-5)


# --- hand-worked small example: y = (0, 1, 2), v = (1, 1, 1) -----------------------------------
# Equal variances: REML tau2 = var(y) - v = 1 - 1 = 0 at the boundary -> 0 (the score is 0 there);
# Q = sum (y - 1)^2 = 2 on 2 df, p = exp(-1); typical variance = 1; mu = 1, SE = 1 / sqrt(3).

def test_hand_example_equal_variances():
    y, v = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 1.0])
    assert tau2_hedges(y, v) == pytest.approx(0.0)
    q = cochran_q(y, v)
    assert (q.q, q.df) == (pytest.approx(2.0), 2)
    assert q.p_value == pytest.approx(math.exp(-1))
    assert typical_variance(v) == pytest.approx(1.0)
    pool = random_effects_reml(y, v)
    assert pool.tau2 == pytest.approx(0.0, abs=1e-5)
    assert pool.mu == pytest.approx(1.0)
    assert pool.se == pytest.approx(1 / math.sqrt(3), abs=1e-5)


def test_hand_example_equal_variances_positive_tau2():
    # y = (0, 2, 4), v = 1: with equal variances REML tau2 = sample variance - v = 4 - 1 = 3
    y, v = np.array([0.0, 2.0, 4.0]), np.ones(3)
    est = tau2_reml(y, v)
    assert est.tau2 == pytest.approx(3.0, abs=1e-5)
    # I^2 = 3 / (3 + 1) = 75%; SE(mu) = sqrt(4 / 3); PI = 2 -/+ 1.96 sqrt(4/3 + 3)
    pool = random_effects_reml(y, v)
    assert pool.i2 == pytest.approx(75.0, abs=1e-3)
    assert pool.h2 == pytest.approx(4.0, abs=1e-4)
    assert pool.se == pytest.approx(math.sqrt(4 / 3), abs=1e-5)
    half = 1.959963984540054 * math.sqrt(4 / 3 + 3)
    assert (pool.pi_low, pool.pi_high) == (pytest.approx(2 - half, abs=1e-5), pytest.approx(2 + half, abs=1e-5))
    # Knapp-Hartung: q = sum w (y - mu)^2 / (k - 1) = (8 / 4) / 2 = 1, so SE unchanged; t_{0.975, 2} = 4.302653
    se, low, high, _ = knapp_hartung(y, v, 3.0)
    assert se == pytest.approx(math.sqrt(4 / 3))
    assert low == pytest.approx(2 - 4.302652729911275 * math.sqrt(4 / 3))
    assert high == pytest.approx(2 + 4.302652729911275 * math.sqrt(4 / 3))


def test_knapp_hartung_is_not_truncated_at_one():
    # y = (0, 1, 2), v = 1, tau2 = 0: q = 2 / 2 = 1; with y = (0, 0.5, 1) q = 0.5 / 2 = 0.25 -> SE halves
    y, v = np.array([0.0, 0.5, 1.0]), np.ones(3)
    se, _, _, _ = knapp_hartung(y, v, 0.0)
    assert se == pytest.approx(math.sqrt(1 / 3) * 0.5)


def test_i2_with_unequal_variances_by_hand():
    # v = (1, 2, 4): w = (1, .5, .25), sum w = 1.75, sum w^2 = 1.3125 -> s^2 = 2 * 1.75 / (3.0625 - 1.3125) = 2
    assert typical_variance([1.0, 2.0, 4.0]) == pytest.approx(2.0)
    assert i2_statistic(2.0, [1.0, 2.0, 4.0]) == pytest.approx(50.0)


def test_prediction_interval_by_hand():
    low, high = prediction_interval(0.2, 0.3, 0.16)
    assert low == pytest.approx(0.2 - 1.959963984540054 * 0.5)
    assert high == pytest.approx(0.2 + 1.959963984540054 * 0.5)


def test_single_school_pools_to_itself():
    pool = random_effects_reml([0.3], [0.04])
    assert pool.tau2 == 0.0 and pool.i2 == 0.0 and pool.q == 0.0 and pool.q_p == 1.0
    assert pool.mu == pytest.approx(0.3) and pool.se == pytest.approx(0.2)
    assert math.isnan(pool.knha_ci_low)


def test_no_schools_is_an_error():
    with pytest.raises(MicrotrialsError):
        random_effects_reml([], [])


# ---------------------------------------------------------------- t-based pooling (heterogeneity.json)

HETEROGENEITY = {t["intervention"]: t for t in json.loads((REFERENCE / "heterogeneity.json").read_text())}


@pytest.mark.parametrize("trial", sorted(HETEROGENEITY))
def test_t_pooling_matches_metafor_from_the_reference_d_and_v(trial):
    """rma(yi, vi, method="REML", test="t"), predict and blup on the reference per-school d, v."""
    from microtrials.stats.pooling import random_effects_reml_t

    expected = HETEROGENEITY[trial]
    schools = pd.DataFrame(expected["per_school"])
    pool = random_effects_reml_t(schools["d"], schools["v"])
    assert pool.k == expected["k"] and pool.df == expected["df"]
    for ours, theirs in [
        (pool.mu, expected["mu"]), (pool.se, expected["se"]), (pool.tau2, expected["tau2"]),
        (pool.ci_low, expected["ci"][0]), (pool.ci_high, expected["ci"][1]), (pool.q, expected["Q"]),
        (pool.pi_low, expected["prediction_interval"][0]), (pool.pi_high, expected["prediction_interval"][1]),
        (pool.p_new_positive, expected["p_new_school_benefits"]), (pool.i2, expected["I2"]),
    ]:
        assert ours == pytest.approx(theirs, abs=1e-6)
    np.testing.assert_allclose(pool.blup, schools["blup"], atol=1e-6)


def test_empirical_bayes_by_hand_lies_between_own_effect_and_mean():
    from microtrials.stats.pooling import empirical_bayes

    # tau2 = 0.04, v = (0.04, 0.12): lambda = 1/2 and 1/4; mu = 0.2.
    eb = empirical_bayes([0.6, -0.2], [0.04, 0.12], mu=0.2, tau2=0.04)
    np.testing.assert_allclose(eb, [0.2 + 0.5 * 0.4, 0.2 + 0.25 * -0.4])


def test_t_pooling_with_two_schools_has_no_prediction_interval():
    from microtrials.stats.pooling import random_effects_reml_t

    pool = random_effects_reml_t([0.1, 0.3], [0.02, 0.03])
    assert math.isnan(pool.pi_low) and math.isnan(pool.pi_high) and math.isnan(pool.p_new_positive)
    # CI on 1 df: t_{1, 0.975} = 12.706
    assert pool.ci_high - pool.mu == pytest.approx(12.7062047 * pool.se, rel=1e-6)
    with pytest.raises(MicrotrialsError):
        random_effects_reml_t([0.1], [0.02])


def test_reml_pooling_of_20000_schools_needs_no_k_by_k_matrix():
    """A national trial: P is never formed (a dense 20,000 x 20,000 P would need 3.2 GB)."""
    import tracemalloc

    rng = np.random.default_rng(3)
    v = rng.uniform(0.02, 0.2, 20000)
    y = 0.2 + rng.normal(0, 0.1, 20000) + rng.normal(0, np.sqrt(v))
    tracemalloc.start()
    fit = tau2_reml(y, v)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 50_000_000
    assert fit.converged and abs(math.sqrt(fit.tau2) - 0.1) < 0.01
