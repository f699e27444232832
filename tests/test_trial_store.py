"""Every trial gets an honest row: not_estimable trials, a failing trial kept as not_refreshed,
missing baselines analysed, spellings merged, heterogeneity on the headline's scale (issue 12)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf

from microtrials.stats import reml
from microtrials.stats import trial_store
from microtrials.stats import trials
from microtrials.stats import units
from microtrials.ingest import warehouse
from microtrials.publish.evidence_table import evidence_table
from microtrials.stats.models import fit_mixedlm
from microtrials.stats.trials import analyse_trial
from tests.helpers.trials import simulate as _simulate
from tests.helpers.trials import warehouse_with as _warehouse

REFERENCE = Path(__file__).resolve().parent / "fixtures" / "reference"
EXPECTED = json.loads((REFERENCE / "expected.json").read_text())


# ---------------------------------------------------------------- not estimable


def test_one_school_pilot_is_not_estimable_and_the_good_trial_is_unchanged(tmp_path):
    good = _simulate("Good trial", 8, 40, seed=1)
    pilot = _simulate("Pilot", 1, 20, seed=2)
    alone = analyse_trial(good)
    with _warehouse(tmp_path, good, pilot) as con:
        run = trial_store.refresh(con)
        trial_store.store(con, run)
        stored = con.execute(warehouse.sql("trial_results")).df().set_index("intervention")
    assert not run.failures
    assert stored.loc["Good trial", "status"] == "published"
    assert stored.loc["Good trial", "effect_size"] == pytest.approx(round(alone.headline.g, 4))
    row = stored.loc["Pilot"]
    assert row["status"] == "not_estimable"
    assert row["notes"].startswith("only one school has sent results so far")
    for column in ("effect_size", "ci_low", "ci_high", "p_value", "tau", "i2", "pi_low", "evidence_strength"):
        assert pd.isna(row[column]), column
    assert "did not converge" not in row["notes"]
    assert bool(row["converged"])  # nothing was fitted, so nothing failed to converge


@pytest.mark.parametrize(
    "case, reason",
    [
        ("no_both_arms", "no school has analysed pupils in both arms"),
        ("one_both_arms", "only one school has analysed pupils in both arms"),
        ("flat", "do not vary within schools"),
        ("four_pupils", "only 4 pupils analysed for 4 fixed effects"),
        ("one_per_arm", "too few pupils in each school's arms to measure how scores vary within schools"),
    ],
)
def test_unestimable_designs_say_why(case, reason):
    frame = _simulate("T", 3, 6, seed=3)
    if case == "no_both_arms":
        frame["arm"] = (frame["school_urn"] == "100000").astype(float)
    elif case == "one_both_arms":
        frame.loc[frame["school_urn"] != "100000", "arm"] = 1.0
    elif case == "flat":  # issue 15: no variance within schools gave g 1.99 with a zero-width CI
        frame["outcome"] = frame["school_urn"].astype(float) / 1000 + 5 * frame["arm"]
    elif case == "one_per_arm":  # red-team 17: 3 schools x (1 intervention + 1 control), scores all differ
        frame = pd.DataFrame({"intervention": "T", "outcome_measure": "Score",
                              "school_urn": ["100000", "100000", "100001", "100001", "100002", "100002"],
                              "arm": [1.0, 0.0] * 3, "outcome": [10.0, 8.0, 12.0, 9.0, 11.0, 7.0],
                              "baseline": np.nan, "fsm": np.nan})
    else:  # issue 15: "only 2 pupils for 3 fixed effects" stopped publication; here 4 for 4
        frame = pd.DataFrame({"intervention": "T", "outcome_measure": "Score",
                              "school_urn": ["100000", "100000", "100001", "100001"], "arm": [1.0, 0.0, 1.0, 0.0],
                              "outcome": [10.0, 8.0, 12.0, 9.0], "baseline": [100.0, np.nan, 98.0, 97.0], "fsm": np.nan})
    result = analyse_trial(frame)
    assert result.status == "not_estimable"
    assert reason in result.reason and result.notes[0] == result.reason
    assert "same score" not in result.reason or case == "flat"
    row = evidence_table([result]).iloc[0]
    assert row["status"] == "not_estimable" and pd.isna(row["effect_size"]) and pd.isna(row["ci_low"])
    assert row["notes"].startswith(result.reason)


# ---------------------------------------------------------------- one trial's failure


def test_a_failing_trial_keeps_its_previous_row_and_the_others_are_stored(tmp_path, monkeypatch):
    first = _simulate("Alpha", 6, 30, seed=4)
    second = _simulate("Beta", 6, 30, seed=5)
    with _warehouse(tmp_path, first, second) as con:
        trial_store.store(con, trial_store.refresh(con))
        before = con.execute(warehouse.sql("trial_results")).df().set_index("intervention")
        schools_before = con.execute(warehouse.sql("school_results")).df()
        # New data for both trials, then a numerical failure in Beta only.
        con.execute("UPDATE pupils SET outcome = outcome + 5 * (arm = 'intervention')::INT")
        real = trials.analyse_cells

        def failing(cells, intervention, outcome_measure, **kwargs):
            if intervention == "Beta":
                raise trials.ModelFailure("the primary model did not converge (forced)")
            return real(cells, intervention, outcome_measure, **kwargs)

        monkeypatch.setattr(trials, "analyse_cells", failing)
        run = trial_store.refresh(con)
        trial_store.store(con, run)
        after = con.execute(warehouse.sql("trial_results")).df().set_index("intervention")
        schools_after = con.execute(warehouse.sql("school_results")).df()
    assert list(run.failures) == ["Beta / Score"]
    assert after.loc["Alpha", "status"] == "published"
    assert after.loc["Alpha", "effect_size"] > before.loc["Alpha", "effect_size"] + 0.2  # refreshed
    beta = after.loc["Beta"]
    assert beta["status"] == "not_refreshed"
    assert beta["notes"].startswith("not refreshed: the model failed this run")
    assert "forced" in beta["notes"]
    assert beta["effect_size"] == before.loc["Beta", "effect_size"]  # the previous figures kept
    kept = schools_after[schools_after["intervention"] == "Beta"].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, schools_before[schools_before["intervention"] == "Beta"].reset_index(drop=True))


def test_the_asset_stores_every_trial_when_one_fails(tmp_path, monkeypatch):
    from pipelines.assets.trials import trial_results
    from pipelines.resources import Settings, Warehouse

    with _warehouse(tmp_path, _simulate("Alpha", 5, 20, seed=6), _simulate("Beta", 5, 20, seed=7)):
        pass
    real = trials.analyse_cells

    def failing(cells, intervention, outcome_measure, **kwargs):
        if intervention == "Alpha":
            raise FloatingPointError("forced")
        return real(cells, intervention, outcome_measure, **kwargs)

    monkeypatch.setattr(trials, "analyse_cells", failing)
    # An instance of our own: without one, Dagster may resolve the definitions against a test
    # instance an earlier test left behind ("undefined DagsterInstance weakref").
    with dg.instance_for_test() as instance:
        result = dg.materialize([trial_results], instance=instance, resources={
            "warehouse_db": Warehouse(database=str(tmp_path / "warehouse.duckdb")),
            "settings": Settings(extracts_dir=str(tmp_path / "extracts"), out_dir=str(tmp_path / "out")),  # no registry
        })
    assert result.success
    metadata = result.asset_materializations_for_node("trial_results")[0].metadata
    assert metadata["not_refreshed"].value == 1
    assert "Beta / Score: effect_size" in metadata and "Alpha / Score: effect_size" not in metadata
    schema = metadata["dagster/column_schema"].value
    assert all(c.description for c in schema.columns)
    assert trial_results.code_versions_by_key[dg.AssetKey("trial_results")] == trial_store.CODE_VERSION
    with warehouse.connect(tmp_path / "warehouse.duckdb") as con:
        table = con.execute(warehouse.sql("trial_results")).df().set_index("intervention")
    assert table.loc["Alpha", "status"] == "not_refreshed" and table.loc["Beta", "status"] == "published"
    assert table.loc["Alpha", "notes"].startswith("not refreshed") and "no previous figures" in table.loc["Alpha", "notes"]


# ---------------------------------------------------------------- missing baselines


def test_pupils_without_a_baseline_are_analysed_with_an_indicator():
    frame = _simulate("T", 6, 30, seed=8)
    rng = np.random.default_rng(9)
    missing = rng.random(len(frame)) < 0.2
    frame.loc[missing, "baseline"] = np.nan
    frame.loc[rng.random(len(frame)) < 0.05, "outcome"] = np.nan
    result = analyse_trial(frame)
    with_outcome = frame.dropna(subset=["outcome"])
    assert result.pupils_analysed == len(with_outcome)
    assert result.pupils_no_baseline == int(with_outcome["baseline"].isna().sum()) > 0
    expected_attrition = 100 * frame["outcome"].isna().sum() / len(frame)
    assert result.attrition.overall == pytest.approx(expected_attrition)
    assert any(f"{result.pupils_no_baseline} pupils with an outcome but no baseline" in n for n in result.notes)
    # Independent: statsmodels MixedLM on the imputed pupil rows (mean baseline + indicator).
    rows = with_outcome.copy()
    rows["baseline_missing"] = rows["baseline"].isna().astype(float)
    rows["baseline"] = rows["baseline"].fillna(rows["baseline"].mean())
    theirs = fit_mixedlm(rows, ["arm", "baseline", "baseline_missing"])
    ours = result.random_intercept  # the sensitivity fit; the headline adds the arm slope to the same design
    assert ours.params["arm"] == pytest.approx(theirs.params["arm"], rel=1e-5)
    assert ours.params["baseline_missing"] == pytest.approx(theirs.params["baseline_missing"], rel=1e-4)
    assert ours.var_pupil == pytest.approx(theirs.var_pupil, rel=1e-4)
    assert list(result.primary.params) == list(ours.params)  # the headline has the indicator too


def test_reference_figures_do_not_move_with_the_missing_indicator():
    files = sorted((REFERENCE / "extracts").glob("*.csv"))
    data = pd.concat([pd.read_csv(f, dtype={"school_urn": str}) for f in files], ignore_index=True)
    data["arm"] = (data["arm"].str.lower() == "intervention").astype(float)
    data["fsm"] = data["fsm"].map({"Y": 1.0, "N": 0.0})
    for trial, group in data.groupby("intervention"):
        result = analyse_trial(group)
        assert result.pupils_no_baseline == 0
        assert "baseline_missing" not in result.primary.params
        assert result.pupils_analysed == EXPECTED[trial]["pupils_analysed"]
        null = EXPECTED[trial]["null_model"]
        g = EXPECTED[trial]["ancova_random_slope"]["beta"] / (null["var_school"] + null["var_pupil"]) ** 0.5
        assert abs(result.headline.g - g) <= 1e-5


# ---------------------------------------------------------------- spellings


def test_spellings_differing_in_case_spacing_or_unicode_form_are_one_trial(tmp_path):
    a = _simulate("Reading Boost", 3, 20, seed=10)
    b = _simulate("reading boost", 2, 20, seed=11).assign(school_urn=lambda f: f["school_urn"].str.replace("1000", "2000"))
    c = _simulate("Reading  Boost", 1, 20, seed=12).assign(school_urn="300000", outcome_measure="ＳＣＯＲＥ")
    with _warehouse(tmp_path, a, b, c) as con:
        run = trial_store.refresh(con)
        trial_store.store(con, run)
        spellings = con.execute("SELECT * FROM trial_spellings").df()
    assert len(run.rows) == 1
    row = run.trial_table.iloc[0]
    assert row["intervention"] == "Reading Boost" and row["outcome_measure"] == "Score"
    assert row["schools"] == 6 and row["pupils_randomised"] == 120
    assert "spellings merged" in row["notes"] and "'reading boost'" in row["notes"]
    assert sorted(spellings["delivered_intervention"]) == ["Reading  Boost", "Reading Boost", "reading boost"]
    assert spellings["merged"].all()


def test_sql_cells_match_frame_cells(tmp_path):
    frame = _simulate("T", 4, 12, seed=13)
    frame.loc[::5, "baseline"] = np.nan
    frame.loc[::7, "outcome"] = np.nan
    frame["fsm"] = np.tile([1.0, 0.0, np.nan], len(frame) // 3 + 1)[: len(frame)]
    with _warehouse(tmp_path, frame) as con:
        from_sql = reml.trial_cells(con, ["T"], ["Score"])
    from_frame = reml.cells_from_frame(frame)
    keys = list(reml.CELL_KEYS)
    a = from_sql.sort_values(keys, na_position="last").reset_index(drop=True)
    b = from_frame.sort_values(keys, na_position="last").reset_index(drop=True)
    assert len(a) == len(b)
    for column in reml.CELL_SUMS:
        np.testing.assert_allclose(a[column].to_numpy(float), b[column].to_numpy(float), rtol=1e-12)


def test_the_asset_reads_no_pupil_rows_into_pandas():
    text = (Path(__file__).resolve().parents[1] / "pipelines" / "assets" / "trials.py").read_text()
    store = (Path(__file__).resolve().parents[1] / "src" / "microtrials" / "stats" / "trial_store.py").read_text()
    assert "trial_pupils" not in text + store and "FROM pupils" not in text + store


# ---------------------------------------------------------------- heterogeneity scale


def test_school_icc_0_9_two_stage_mean_agrees_with_the_headline():
    """Issue 12: with a school ICC of 0.9 the old unadjusted two-stage mean was 0.80 against 0.23."""
    frame = _simulate("T", 20, 40, seed=14, sd_school=30.0, effect=7.0, baseline=False)
    result = analyse_trial(frame)
    assert result.unconditional.icc > 0.85
    pool = result.pool
    assert abs(pool.mu - result.headline.g) <= 0.1
    assert result.spread.pi_low <= result.headline.g <= result.spread.pi_high
    eb = result.per_school.dropna(subset=["g"])
    assert eb["eb_g"].std() <= eb["g"].std()  # the shrunken effects vary less than the schools on their own


def test_per_school_ancova_matches_least_squares_on_pupil_rows():
    frame = _simulate("T", 3, 16, seed=15)
    frame.loc[frame.index[::6], "baseline"] = np.nan
    result = analyse_trial(frame)
    sd = result.sd_total
    for urn, rows in frame.dropna(subset=["outcome"]).groupby("school_urn"):
        rows = rows.assign(baseline_missing=rows["baseline"].isna().astype(float),
                           baseline=rows["baseline"].fillna(frame["baseline"].mean()))
        fit = smf.ols("outcome ~ arm + baseline + baseline_missing", rows).fit()
        school = result.per_school.set_index("school_urn").loc[urn]
        assert school["g"] == pytest.approx(fit.params["arm"] / sd, rel=1e-8)
        assert school["var"] == pytest.approx(fit.bse["arm"] ** 2 / sd**2, rel=1e-8)


def test_two_schools_leave_the_prediction_interval_blank_with_a_note():
    result = analyse_trial(_simulate("T", 2, 30, seed=16))
    row = evidence_table([result]).iloc[0]
    assert row["status"] == "published" and pd.notna(row["tau"])
    assert pd.isna(row["pi_low"]) and pd.isna(row["pi_high"]) and pd.isna(row["p_new_school_benefits"])
    assert "prediction interval left blank" in row["notes"]


def test_one_arm_school_note_names_its_pupils():
    frame = _simulate("T", 4, 20, seed=17)
    frame.loc[frame["school_urn"] == "100003", "arm"] = 1.0
    result = analyse_trial(frame)
    school = result.per_school.set_index("school_urn").loc["100003"]
    assert school["note"] == "one arm only (20 pupils in intervention)"
    assert pd.isna(school["g"]) and pd.isna(school["eb_g"])


def test_memory_for_one_trial_does_not_grow_with_other_trials_pupils(tmp_path):
    """Issue 13 point 3: a trial is analysed from its cell sums; other trials' pupils stay in DuckDB."""
    import tracemalloc

    small = _simulate("Small", 10, 30, seed=18)

    def peak(con) -> int:
        combos = con.execute(warehouse.sql("delivered_combos")).df()
        [spell] = [u for u in units.units_without_registry(combos) if u.intervention == "Small"]
        trial_store.analyse_one(con, spell)  # warm caches (imports, SQL text)
        tracemalloc.start()
        trial_store.analyse_one(con, spell)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with _warehouse(tmp_path / "a", small) as con:
        alone = peak(con)
    with _warehouse(tmp_path / "b", small, _simulate("Big", 400, 500, seed=19)) as con:
        crowded = peak(con)
    print(f"peak Python memory for one trial: {alone} bytes alone, {crowded} with 200,000 other pupils")
    assert crowded <= 1.2 * alone + 200_000, (alone, crowded)


def test_a_constant_baseline_is_not_used_and_the_trial_is_still_estimated():
    frame = _simulate("T", 4, 20, seed=21)
    frame["baseline"] = 100.0
    result = analyse_trial(frame)
    assert result.status == "published" and "baseline" not in result.primary.params
    assert any("the baseline scores do not vary" in n for n in result.notes)


def test_a_warehouse_of_only_unestimable_trials_keeps_numeric_columns(tmp_path):
    with _warehouse(tmp_path, _simulate("Pilot", 1, 20, seed=22)) as con:
        trial_store.store(con, trial_store.refresh(con))
        types = dict(con.execute("SELECT column_name, data_type FROM information_schema.columns "
                                 "WHERE table_name = 'trial_results'").fetchall())
        row = con.execute(warehouse.sql("trial_results")).df().iloc[0]
    assert types["effect_size"] == "DOUBLE" and types["pi_low"] == "DOUBLE"
    assert types["schools"] == "BIGINT" and types["status"] == "VARCHAR" and types["converged"] == "BOOLEAN"
    assert row["status"] == "not_estimable" and row["schools"] == 1
