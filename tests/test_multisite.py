"""The multisite headline: tau on simulated trials, the fallback to a random intercept, distinct schools
across rounds, scores with a large offset, non-convergence and numerical warnings as notes."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from microtrials.stats import reml
from microtrials.publish.evidence_table import evidence_table
from microtrials.stats.trials import analyse_cells, analyse_trial


def simulate(schools: int, pupils: int, tau: float, seed: int, effect: float = 0.0, icc: float = 0.15) -> pd.DataFrame:
    """A trial on the total-SD scale (x 15 + 100): school intercept var ``icc``, arm slope SD ``tau``,
    a baseline explaining 56% of the pupil variance (y = u + (effect + s) arm + 0.75 b + e), half of
    each school's pupils randomised to the intervention."""
    rng = np.random.default_rng(seed)
    school = np.repeat(np.arange(schools), pupils)
    arm = np.concatenate([rng.permutation(np.arange(pupils) < (pupils + 1) // 2) for _ in range(schools)])
    b = rng.normal(0, 1, len(school))
    u, s = rng.normal(0, np.sqrt(icc), schools)[school], rng.normal(0, tau, schools)[school]
    y = u + (effect + s) * arm + 0.75 * b + rng.normal(0, np.sqrt(1 - icc - 0.5625), len(school))
    return pd.DataFrame({"school_urn": (100000 + school).astype(str), "arm": arm.astype(float),
                         "outcome": 100 + 15 * y, "baseline": 100 + 15 * b, "fsm": np.nan,
                         "intervention": "Sim", "outcome_measure": "Score"})


# ---------------------------------------------------------------- tau on simulated trials


def test_tau_of_many_small_schools_is_near_the_truth():
    """1,000 schools x 5 pupils, true tau 0.10 (first seed): the published tau lies in [0.05, 0.16]
    (0.131); the two-stage pooling of the schools' own ANCOVAs, the earlier published figure, gives 0.5+."""
    result = analyse_trial(simulate(1000, 5, 0.10, seed=1))
    row = evidence_table([result]).iloc[0]
    assert 0.05 <= row["tau"] <= 0.16
    assert result.pool.tau > 0.3


def test_tau_without_variation_is_small():
    """131 schools x 20 pupils, no effect and no variation (first seed): tau < 0.08 (0.006)."""
    result = analyse_trial(simulate(131, 20, 0.0, seed=1))
    assert evidence_table([result]).iloc[0]["tau"] < 0.08


@pytest.mark.slow
def test_tau_over_repeated_trials():
    """Over 9 seeds: the median published tau of 1,000 x 5 (true 0.10) lies in [0.05, 0.16] and without
    variation (131 x 20) is below 0.08; the two-stage pooling's medians are several times larger.
    (Over 15 seeds: 1,000 x 5 median 0.120, 10%-90% 0.014-0.194; 131 x 20 median 0.025, 90% 0.090.)"""
    many = [analyse_trial(simulate(1000, 5, 0.10, seed=s)) for s in range(1, 10)]
    none = [analyse_trial(simulate(131, 20, 0.0, seed=s)) for s in range(1, 10)]
    assert 0.05 <= np.median([r.spread.tau for r in many]) <= 0.16
    assert np.median([r.spread.tau for r in none]) < 0.08
    assert np.median([r.pool.tau for r in many]) > 3 * np.median([r.spread.tau for r in many])


# ---------------------------------------------------------------- the fallback and the sensitivity figure


def _boundary_trial() -> pd.DataFrame:
    """No baseline and every school's arm difference exactly 3 points: the slope variance is estimated at 0."""
    data = simulate(8, 20, 0.0, seed=3).assign(baseline=np.nan)
    schools = data["school_urn"].unique()
    own = data.groupby(["school_urn", "arm"])["outcome"].transform("mean")
    shift = data.groupby("school_urn")["outcome"].transform("mean")
    # centre each school's arms on its mean, then give every school the same difference of 3 points
    data["outcome"] = data["outcome"] - own + shift + 3.0 * (data["arm"] - 0.5)
    assert len(schools) == 8
    return data


def test_slope_variance_at_zero_falls_back_to_random_intercept():
    result = analyse_trial(_boundary_trial())
    assert result.model_choice == "random intercept: the arm slope's variance was estimated as 0"
    assert result.primary is result.random_intercept
    assert result.primary.formula.endswith("(1 | school), REML")
    assert any("estimated as 0, so the model is the random-intercept model" in n for n in result.notes)
    assert result.spread.tau == 0.0
    assert result.random_slope is not None and result.random_slope.sd_slope < 1e-4 * result.random_slope.var_pupil ** 0.5
    # the random-slope fit at its boundary is the random-intercept model
    assert result.random_slope.params["arm"] == pytest.approx(result.primary.params["arm"], rel=1e-6)
    eb = result.per_school["eb_g"].dropna()
    assert len(eb) == 8 and np.allclose(eb, result.headline.g)


def test_random_slope_not_converged_is_said_and_falls_back(monkeypatch):
    real = reml.fit_reml

    def not_converged(stats, covariates, random_slope=False):
        fit = real(stats, covariates, random_slope=random_slope)
        from dataclasses import replace
        return replace(fit, converged=False) if random_slope else fit

    monkeypatch.setattr(reml, "fit_reml", not_converged)
    result = analyse_trial(simulate(6, 24, 0.15, seed=2))
    assert result.model_choice == "random intercept: the multisite model did not converge"
    assert any("multisite model (random arm slope) did not converge" in n for n in result.notes)
    row = evidence_table([result]).iloc[0]
    assert "did not converge" in row["notes"] and row["status"] == "published"


def test_nothing_converges_is_a_model_failure(monkeypatch):
    from microtrials.stats.trials import ModelFailure

    real = reml.fit_reml

    def never(stats, covariates, random_slope=False):
        from dataclasses import replace
        fit = real(stats, covariates, random_slope=random_slope)
        return replace(fit, converged=False) if ARM_IN(covariates) else fit

    monkeypatch.setattr(reml, "fit_reml", never)
    with pytest.raises(ModelFailure, match="neither the multisite nor the random-intercept model converged"):
        analyse_trial(simulate(6, 24, 0.15, seed=2))


def ARM_IN(covariates: list[str]) -> bool:  # noqa: N802 - a predicate used by the monkeypatched fitter
    return "arm" in covariates


def test_sensitivity_figure_is_the_random_intercept_fit():
    result = analyse_trial(simulate(10, 25, 0.15, seed=4, effect=0.2))
    ri = result.random_intercept
    assert result.model_choice.startswith("multisite")
    assert result.sensitivity.g == pytest.approx(ri.params["arm"] / result.sd_total, rel=1e-12)
    assert result.sensitivity.ci_high - result.sensitivity.ci_low < result.headline.ci_high - result.headline.ci_low


# ---------------------------------------------------------------- rounds, offsets, warnings


def _two_rounds(schools: int) -> pd.DataFrame:
    first, second = simulate(schools, 20, 0.1, seed=5), simulate(schools, 20, 0.1, seed=6)
    return pd.concat([first.assign(round="Autumn"), second.assign(round="Spring")], ignore_index=True)


def test_all_rounds_counts_distinct_schools():
    """3 schools in two rounds: 6 school:round units in the model, 3 schools published, and the
    "fewer than 5 schools" deduction applies."""
    data = _two_rounds(3)
    result = analyse_cells(reml.cells_from_frame(data, extra_keys=("round",)), "Sim", "Score",
                           rounds=["Autumn", "Spring"])
    assert result.primary.n_groups == 6
    assert result.schools == 3 and result.schools_both_arms == 3
    assert result.spread.k == 3 and result.spread.df == 2
    assert any("only 3 schools" in r for r in result.strength.reasons)
    assert "(1 + arm | school:round)" in result.random_slope.formula


def test_large_offset_gives_the_same_figures():
    """+10,000,000 on every outcome and baseline: the same evidence row (SQL and frame paths centre the sums)."""
    data = simulate(12, 25, 0.1, seed=7, effect=0.2)
    shifted = data.assign(outcome=data["outcome"] + 1e7, baseline=data["baseline"] + 1e7)
    plain, moved = analyse_trial(data), analyse_trial(shifted)
    assert plain.headline.g == pytest.approx(moved.headline.g, rel=1e-6)  # achieved 3e-8
    assert plain.spread.tau == pytest.approx(moved.spread.tau, rel=1e-6, abs=1e-9)
    a, b = evidence_table([plain]).iloc[0], evidence_table([moved]).iloc[0]
    pd.testing.assert_series_equal(a, b)


def test_cells_of_different_centres_are_moved_exactly():
    """Cells summed about different centres (one query per round) give the statistics of one centre."""
    data = simulate(5, 20, 0.1, seed=8)
    whole = reml.cells_from_frame(data)
    parts = pd.concat([reml.cells_from_frame(part) for _, part in data.groupby(data.index % 2)], ignore_index=True)
    a = reml.stats_from_cells(reml.choose_cells(whole, use_baseline=True), ["Intercept", "arm", "baseline"])
    b = reml.stats_from_cells(reml.choose_cells(parts, use_baseline=True), ["Intercept", "arm", "baseline"])
    fa = reml.fit_reml(a, ["arm", "baseline"], random_slope=True)
    fb = reml.fit_reml(b, ["arm", "baseline"], random_slope=True)
    assert fa.params["arm"] == pytest.approx(fb.params["arm"], rel=1e-9)
    assert fa.loglik_reml == pytest.approx(fb.loglik_reml, rel=1e-12)


def test_numerical_warnings_become_a_note_with_the_cause():
    """A baseline that is the arm x 1000 (plus noise of 1e-6): LinAlgWarnings inside the fit never
    reach the terminal; the trial says the fit is ill-conditioned and why."""
    data = simulate(6, 20, 0.1, seed=1)
    data["baseline"] = data["arm"] * 1000 + np.random.default_rng(1).normal(0, 1e-6, len(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = analyse_trial(data)
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]
    note = next(n for n in result.notes if n.startswith("ill-conditioned fit"))
    assert "LinAlgWarning" in note and "arm and baseline are nearly the same" in note


def test_sql_cells_with_a_large_offset_give_the_same_figures(tmp_path):
    """The pipeline's query (sql/matched_cells.sql) sums about the trial's means: +10,000,000 changes nothing."""
    from microtrials.ingest import warehouse

    data = simulate(12, 25, 0.1, seed=7, effect=0.2)
    rows = []
    with warehouse.connect(tmp_path / "w.duckdb") as con:
        for name, offset in (("Plain", 0.0), ("Offset", 1e7)):
            frame = pd.DataFrame({
                "school_urn": data["school_urn"], "pupil_key": [f"{name}{i}" for i in range(len(data))],
                "intervention": name, "outcome_measure": "Score",
                "arm": np.where(data["arm"] == 1, "intervention", "control"),
                "outcome": data["outcome"] + offset, "baseline": data["baseline"] + offset,
                "source_file": "f.csv", "source_line": np.arange(len(data), dtype=np.int32) + 2, "delivery_id": "d",
            })
            con.register("frame", frame)
            con.execute("INSERT INTO pupils BY NAME SELECT * FROM frame")
            con.unregister("frame")
            cells = reml.trial_cells(con, [name], ["Score"])
            assert cells["outcome_centre"].nunique() == 1
            rows.append(evidence_table([analyse_cells(cells, "Sim", "Score")]).iloc[0])
    pd.testing.assert_series_equal(rows[0], rows[1])
    assert rows[0]["status"] == "published"
