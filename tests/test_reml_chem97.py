"""The random-slope REML on real data at scale: the A-level chemistry scores (mlmRev Chem97,
31,022 pupils in 2,410 schools) against lme4 (fixtures/chem97, made by benchmarks/r/chem97_lme4.R)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from microtrials.stats.models import ARM, BASELINE
from microtrials.stats.reml import cells_from_frame, choose_cells, fit_reml, stats_from_cells

CHEM97 = Path(__file__).resolve().parent / "fixtures" / "chem97"
LME4 = json.loads((CHEM97 / "lme4.json").read_text())


@pytest.fixture(scope="module")
def pupils() -> pd.DataFrame:
    return pd.read_csv(CHEM97 / "pupils.csv.gz", dtype={"school": str})


def _fit(pupils: pd.DataFrame, arm: str, random_slope: bool = True):
    frame = pd.DataFrame({"school_urn": pupils["school"], "arm": pupils[arm], "outcome": pupils["score"],
                          "baseline": pupils["gcsescore"], "fsm": np.nan})
    cells = choose_cells(cells_from_frame(frame), use_baseline=True)
    stats = stats_from_cells(cells, ["Intercept", ARM, BASELINE])
    return fit_reml(stats, [ARM, BASELINE], random_slope=random_slope)


@pytest.mark.parametrize("arm", ["arm", "female"])
def test_chem97_random_slope_equals_lme4(pupils, arm):
    """Against lme4 at a tight tolerance: fixed effects within 1e-6 relative or 1e-5 SE (the
    assigned arm's effect is near 0: achieved 7e-8 absolute, 3e-6 SE), SEs within 1e-6 relative
    (achieved 5e-8), theta within 1e-6, REML criterion within 1e-10 relative and never above lme4's."""
    expected = LME4[arm]["tight"]
    fit = _fit(pupils, arm)
    assert fit.n_obs == LME4["pupils"] and fit.n_groups == LME4["schools"]
    for ours, name in ((fit.params[ARM], arm), (fit.params[BASELINE], "gcsescore"), (fit.params["Intercept"], "(Intercept)")):
        theirs = expected["fixef"][name]
        assert abs(ours - theirs) <= max(1e-6 * abs(theirs), 1e-5 * expected["se"][name])
    assert fit.bse[ARM] == pytest.approx(expected["se"][arm], rel=1e-6)
    np.testing.assert_allclose(fit.theta, expected["theta"], atol=1e-6)
    assert fit.var_pupil == pytest.approx(expected["sigma"] ** 2, rel=1e-7)
    assert fit.var_slope == pytest.approx(expected["var_slope"], rel=1e-5)
    criterion = -2 * fit.loglik_reml
    assert criterion == pytest.approx(expected["reml_criterion"], rel=1e-10)
    assert criterion <= expected["reml_criterion"] + 1e-10 * expected["reml_criterion"]
    assert fit.converged and not fit.singular
    first = pd.DataFrame(expected["ranef_first10"]).set_index("school")
    np.testing.assert_allclose(fit.blups.loc[first.index, "arm"], first["slope"], atol=1e-6)


def test_chem97_default_lme4_stops_short_of_our_optimum(pupils):
    """lme4 with its default control reaches a REML criterion at most 1e-6 above ours (it stops early)."""
    fit = _fit(pupils, "arm")
    assert -2 * fit.loglik_reml <= LME4["arm"]["default"]["reml_criterion"]
    assert LME4["arm"]["default"]["reml_criterion"] - (-2 * fit.loglik_reml) < 1e-6
