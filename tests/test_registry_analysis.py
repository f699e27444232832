"""The registry in the analysis (issue 11 points 1-4): matching, rounds, the cumulative row, status
against the plan, and what is (not) published.

Fixture: the reference extracts (tests/fixtures/reference/extracts/) with "Reciprocal reading"
split into two rounds by school, one school spelling it by its alias and another with odd case
and spacing, one school planned in both rounds that sends a `round` column, one school not in the
plan, a planned school that never delivers, and "Maths mastery" left out of the registry (an
unregistered intervention). Every figure is checked against an independent fit: statsmodels
MixedLM (REML) on the pupil rows read from the warehouse, grouped by our own split of schools
(not by the matching code) -- not against lme4 output.
"""

from __future__ import annotations

import csv
import shutil
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from microtrials.publish import gate as publication_gate
from microtrials.ingest import loading
from microtrials.ingest import registry
from microtrials.stats import trial_store
from microtrials.ingest import warehouse
from microtrials.stats.models import fit_mixedlm

REFERENCE = Path(__file__).resolve().parent / "fixtures" / "reference" / "extracts"
KEY = b"registry-analysis-test-key"
TODAY = date(2026, 11, 23)

AUTUMN, SPRING = "2025 Autumn", "2026 Spring"
ALL_SCHOOLS = sorted(p.stem for p in REFERENCE.glob("*.csv") if p.stem != "111626")  # 111626: Maths mastery only
ROUND_ONE = ALL_SCHOOLS[:12]
ROUND_TWO = ALL_SCHOOLS[12:-1]
UNPLANNED = ALL_SCHOOLS[-1]  # in no round: joins the latest started round (SPRING)
BOTH = ROUND_TWO[0]  # planned in both rounds; its extract says SPRING
ALIAS_SCHOOL, CASE_SCHOOL = ROUND_ONE[1], ROUND_TWO[2]
AWAITED = "111699"  # planned in AUTUMN, never delivers

REGISTRY = f"""intervention,outcome_measure,round,start_date,end_date,schools,aliases,secondary_outcomes,registered_on,toolkit_strand,national_months,cost_per_pupil,description
Reciprocal reading,NGRT standardised score,{AUTUMN},2025-09-01,2025-12-19,{' '.join(ROUND_ONE + [AWAITED, BOTH])},Reciprocal Reading Programme,,2025-07-01,Reading comprehension strategies,6,25,Small groups read together.
Reciprocal reading,NGRT standardised score,{SPRING},2026-01-05,2026-04-01,{';'.join(ROUND_TWO)},,,2025-12-01,Reading comprehension strategies,6,25,Small groups read together.
"""


def _fixture(folder: Path) -> None:
    """Copy the reference extracts with the spellings and the round column described above."""
    folder.mkdir()
    for path in sorted(REFERENCE.glob("*.csv")):
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
        header, body = rows[0], rows[1:]
        at = header.index("intervention")
        spelling = {ALIAS_SCHOOL: "Reciprocal Reading Programme", CASE_SCHOOL: "reciprocal  READING"}.get(path.stem)
        reading = [r[at] == "Reciprocal reading" for r in body]
        if spelling:
            body = [r[:at] + [spelling] + r[at + 1:] if mine else r for r, mine in zip(body, reading)]
        if path.stem == BOTH:
            header = header + ["round"]
            body = [r + [SPRING if mine else ""] for r, mine in zip(body, reading)]
        with (folder / path.name).open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([header, *body])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    _fixture(root / "extracts")
    (root / "trials.csv").write_text(REGISTRY, encoding="utf-8")
    reg = registry.load_registry(registry.registry_path(root / "extracts", environ={}))
    assert reg is not None and not reg.problems
    with warehouse.connect(root / "warehouse.duckdb") as con:
        reports = loading.load_folder(con, root / "extracts", KEY)
        assert all(r.status == "loaded" for r in reports)
        result = trial_store.refresh(con, reg, today=TODAY)
        trial_store.store(con, result)
        pupils = con.execute("SELECT school_urn, intervention, arm, outcome, baseline FROM pupils").df()
        stored = {t: con.execute(warehouse.sql(t)).df() for t in
                  ("trial_results", "exploratory_results", "school_results", "registry_messages", "registry_progress")}
        stored["gate"] = publication_gate.from_warehouse(con, reg)
    reading = pupils[pupils["intervention"] != "Maths mastery"].dropna(subset=["outcome"]).copy()
    reading["arm"] = (reading["arm"] == "intervention").astype(float)
    reading["round"] = np.where(reading["school_urn"].isin(ROUND_ONE), AUTUMN, SPRING)
    reading["unit"] = reading["school_urn"] + ":" + reading["round"]
    return result, stored, reading


def _statsmodels(data: pd.DataFrame, covariates: list[str], null: list[str], groups: str,
                 random_slope: bool = False) -> tuple[float, float, float]:
    """(beta_arm, SE, g = beta / sqrt(var_school + var_pupil) of the null model): statsmodels MixedLM
    by REML (models.fit_mixedlm: statsmodels' own optimisers, lbfgs then bfgs/powell/nm), grouped by
    ``groups``, with a random arm slope when asked."""
    frame = data.assign(school_urn=data[groups])
    full, zero = fit_mixedlm(frame, covariates, random_slope=random_slope), fit_mixedlm(frame, null)
    assert full.converged and zero.converged
    return full.params["arm"], full.bse["arm"], full.params["arm"] / np.sqrt(zero.var_school + zero.var_pupil)


def _row(stored, round_name):
    table = stored["trial_results"]
    return table[table["round"] == round_name].iloc[0]


@pytest.mark.parametrize("round_name", [AUTUMN, SPRING])
def test_each_round_equals_statsmodels_on_that_rounds_pupils(run, round_name):
    """The headline (multisite) fit against statsmodels' random slope, the sensitivity figure against its
    random intercept (statsmodels' SE of a random-slope fit comes from the joint Hessian, ours, as lme4's,
    is conditional on the variances: only the random-intercept SEs are compared)."""
    _, stored, reading = run
    rows = reading[reading["round"] == round_name]
    row = _row(stored, round_name)
    beta, _, g = _statsmodels(rows, ["arm", "baseline"], [], "school_urn", random_slope=True)
    assert row["model_choice"].startswith("multisite")
    assert row["beta"] == pytest.approx(beta, rel=0.001)
    assert row["effect_size"] == pytest.approx(g, abs=0.0005)
    beta, se, g = _statsmodels(rows, ["arm", "baseline"], [], "school_urn")
    assert row["ri_beta"] == pytest.approx(beta, rel=0.001)
    assert row["ri_se"] == pytest.approx(se, rel=0.005)
    assert row["ri_effect_size"] == pytest.approx(g, abs=0.0005)
    assert row["pupils_analysed"] == (rows["round"] == round_name).sum()


def test_cumulative_row_equals_statsmodels_with_round_and_school_round(run):
    """outcome ~ arm + baseline + round + (1 + arm | school:round), over the SD of outcome ~ round + (1 | school:round);
    the random-intercept sensitivity figure likewise; ``schools`` counts distinct schools."""
    _, stored, reading = run
    data = reading.assign(spring=(reading["round"] == SPRING).astype(float))  # C(round), AUTUMN the reference
    row = _row(stored, registry.CUMULATIVE_ROUND)
    beta, _, g = _statsmodels(data, ["arm", "baseline", "spring"], ["spring"], "unit", random_slope=True)
    print(f"cumulative: ours beta {row['beta']:.6f} g {row['effect_size']:.6f}; statsmodels beta {beta:.6f} g {g:.6f}")
    assert row["beta"] == pytest.approx(beta, rel=0.001)
    assert row["effect_size"] == pytest.approx(g, abs=0.0005)
    assert "(1 + arm | school:round)" in row["model"] and row["pupils_analysed"] == len(reading)
    beta, se, g = _statsmodels(data, ["arm", "baseline", "spring"], ["spring"], "unit")
    assert row["ri_beta"] == pytest.approx(beta, rel=0.001)
    assert row["ri_se"] == pytest.approx(se, rel=0.005)
    assert row["schools"] == reading["school_urn"].nunique()  # distinct schools (test_multisite: a school in two rounds)
    # The two-stage heterogeneity pools every school:round unit (each school of each round).
    units = reading.groupby("unit")["arm"].agg(["min", "max"])
    assert row["schools_pooled"] <= ((units["min"] == 0) & (units["max"] == 1)).sum()
    assert row["schools_pooled"] > max(_row(stored, AUTUMN)["schools_pooled"], _row(stored, SPRING)["schools_pooled"])
    schools = stored["school_results"]
    cumulative = schools[schools["round"] == registry.CUMULATIVE_ROUND]
    assert set(cumulative["school_round"]) == {AUTUMN, SPRING} and len(cumulative) == reading["unit"].nunique()


def test_rows_are_rounds_in_date_order_then_all_rounds_and_nothing_unregistered(run):
    _, stored, _ = run
    table = stored["trial_results"]
    assert list(table["round"]) == [AUTUMN, SPRING, registry.CUMULATIVE_ROUND]
    assert set(table["intervention"]) == {"Reciprocal reading"} and set(table["outcome_role"]) == {"primary"}
    assert set(table["toolkit_strand"]) == {"Reading comprehension strategies"} and set(table["cost_rating"]) == {"£"}
    exploratory = stored["exploratory_results"]
    assert list(exploratory["intervention"]) == ["Maths mastery"] and list(exploratory["outcome_role"]) == ["unregistered"]
    assert exploratory["effect_size"].notna().all()  # analysed for evaluators, just not published


def test_awaited_school_makes_its_round_interim_and_is_named(run):
    _, stored, _ = run
    autumn = _row(stored, AUTUMN)
    assert autumn["status"] == "interim" and autumn["notes"].startswith(f"awaiting 2 of {len(ROUND_ONE) + 2} schools")
    assert _row(stored, SPRING)["status"] == "published"
    assert _row(stored, registry.CUMULATIVE_ROUND)["status"] == "interim"
    progress = stored["registry_progress"].set_index("round")
    # BOTH sent its rows for SPRING only, so AUTUMN still awaits it as well as the school that never sent.
    assert progress.loc[AUTUMN, "awaited_urns"] == " ".join(sorted([AWAITED, BOTH]))
    assert progress.loc[SPRING, "unplanned_urns"] == UNPLANNED


def test_officer_messages_name_the_unregistered_intervention_and_the_unplanned_school(run):
    _, stored, _ = run
    messages = stored["registry_messages"]
    by_rule = dict(zip(messages["rule"], messages["message"]))
    assert "'Maths mastery' is not in the registry: add it, or correct the name" in by_rule["unregistered"]
    assert f"school {UNPLANNED} is not in the plan" in by_rule["unplanned_school"] and SPRING in by_rule["unplanned_school"]


def test_without_a_registry_every_intervention_is_a_trial(tmp_path):
    with warehouse.connect(tmp_path / "warehouse.duckdb") as con:
        loading.load_folder(con, REFERENCE, KEY)
        table = trial_store.refresh(con).trial_table
    assert list(table["intervention"]) == ["Maths mastery", "Reciprocal reading"]
    assert table["round"].isna().all() and table["outcome_role"].isna().all()


def test_the_site_has_a_folder_per_round_and_the_officer_report(run):
    """Per-trial folders key on (intervention, outcome_measure, round); the load report page and
    registry_report.csv name the unregistered intervention, the unplanned school and the awaited URNs."""
    from microtrials.publish import dictionary
    from microtrials.publish import site
    from microtrials.publish.evidence_table import COLUMNS, EXTRA_COLUMNS

    _, stored, _ = run
    schools = stored["school_results"]
    per_trial = {(i, o, r): g for (i, o, r), g in schools.groupby(["intervention", "outcome_measure", "round"])}
    rows = site.registry_report(stored["registry_messages"], stored["registry_progress"])
    files = site.build_site(stored["trial_results"][COLUMNS + EXTRA_COLUMNS], per_trial, pd.DataFrame(),
                            "1 November 2026", "now", registry_rows=rows, gate=stored["gate"])
    folders = sorted({name.split("/")[0] for name in files if name.endswith("/schools.csv")})
    # Each round has its own folder; the "all rounds" row keeps the trial's plain folder (site.page_names).
    assert folders == ["reciprocal-reading--ngrt-standardised-score",
                       "reciprocal-reading--ngrt-standardised-score--2025-autumn",
                       "reciprocal-reading--ngrt-standardised-score--2026-spring"]
    cumulative = pd.read_csv(pd.io.common.BytesIO(files[f"{folders[0]}/schools.csv"]), dtype=str, encoding="utf-8-sig")
    assert set(cumulative["school_round"]) == {AUTUMN, SPRING}
    evidence = pd.read_csv(pd.io.common.BytesIO(files["evidence_table.csv"]), encoding="utf-8-sig")
    assert list(evidence["round"]) == [AUTUMN, SPRING, registry.CUMULATIVE_ROUND]
    assert list(evidence["outcome_role"]) == ["primary"] * 3 and "Maths mastery" not in set(evidence["intervention"])
    report = pd.read_csv(pd.io.common.BytesIO(files["registry_report.csv"]), dtype=str, encoding="utf-8-sig")
    assert list(report.columns) == site.REGISTRY_REPORT_COLUMNS
    assert all(c in dictionary.BY_COLUMN for c in report.columns)
    text = " ".join(report["What to do"])
    # unregistered, though sent for many pupils by several schools: with a registry only its names are published
    assert "Maths mastery" not in files["registry_report.csv"].decode() and "an unregistered intervention name from " \
        "schools 111604, 111605" in text and f"school {UNPLANNED} is not in the plan" in text
    assert f"still awaited: {' '.join(sorted([AWAITED, BOTH]))}" in text
    assert AWAITED in files["load-report.html"].decode()


def test_a_primary_outcome_changed_after_results_arrived_is_noted(tmp_path):
    """Outcome switching is visible: the plan read before results named another primary outcome."""
    from datetime import datetime, timedelta

    _fixture(tmp_path / "extracts")
    before = registry.read_registry(REGISTRY.replace("NGRT standardised score", "Reading age").encode())
    after = registry.read_registry(REGISTRY.encode())
    now = datetime.now()
    versions = [(now - timedelta(days=400), before), (now + timedelta(days=1), after)]
    with warehouse.connect(tmp_path / "warehouse.duckdb") as con:
        loading.load_folder(con, tmp_path / "extracts", KEY)
        table = trial_store.refresh(con, after, today=TODAY, versions=versions).trial_table.set_index("round")
    for round_name in (AUTUMN, SPRING, registry.CUMULATIVE_ROUND):
        assert "primary outcome changed from 'Reading age' to 'NGRT standardised score'" in table.loc[round_name, "notes"]
    # Read before any results arrived, the same change is no switch.
    early = [(now - timedelta(days=400), before), (now - timedelta(days=300), after)]
    with warehouse.connect(tmp_path / "warehouse.duckdb") as con:
        table = trial_store.refresh(con, after, today=TODAY, versions=early).trial_table
    assert not table["notes"].str.contains("primary outcome changed").any()


def test_secondary_outcomes_are_published_marked_and_exploratory_ones_are_not(tmp_path):
    from tests.helpers.trials import simulate as _simulate
    from tests.helpers.trials import warehouse_with as _warehouse

    frames = [_simulate("Alpha", 6, 30, seed=31, measure=m) for m in ("Score", "Extra", "Other")]
    plan = registry.read_registry(
        ("intervention,outcome_measure,round,start_date,end_date,schools,secondary_outcomes\n"
         "Alpha,Score,2026,2026-01-05,,100000 100001 100002 100003 100004 100005,Extra\n").encode())
    with _warehouse(tmp_path, *frames) as con:
        run = trial_store.refresh(con, plan, today=TODAY)
    table = run.trial_table
    assert list(zip(table["outcome_measure"], table["outcome_role"])) == [("Extra", "secondary"), ("Score", "primary")]
    assert list(zip(run.exploratory_table["outcome_measure"], run.exploratory_table["outcome_role"])) == [
        ("Other", "exploratory")]
    assert (table["round"] == "2026").all() and table["effect_size"].notna().all()


def test_run_with_a_trials_file_that_does_not_exist_stops_before_starting(tmp_path, monkeypatch, capsys):
    from microtrials import cli

    for name in ("MICROTRIALS_EXTRACTS", "MICROTRIALS_OUT", "MICROTRIALS_DB", "MICROTRIALS_TRIALS"):
        monkeypatch.setenv(name, "unchanged")
    code = cli.main(["run", "--extracts", str(REFERENCE), "--out", str(tmp_path / "out"), "--db",
                     str(tmp_path / "w.duckdb"), "--trials", str(tmp_path / "trails.csv")])
    assert code == cli.NOT_STARTED and "trails.csv: no such file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_registry_rows_are_named_in_the_load_report_and_the_rest_works(tmp_path):
    """Issue 11: a registry row with a bad date, an unknown URN format or a duplicate round is named
    (line, column, what to do) in the officer's load report; the good rounds are still analysed."""
    from microtrials.publish import site

    bad = (REGISTRY
           + "Reciprocal reading,NGRT standardised score,2026 Summer,2026-31-04,2026-07-01,111601,,,2026-01-01,,,,x\n"
           + "Maths mastery,PUMA standardised score,2025-26,2025-09-01,2026-07-01,11160,,,2025-07-01,,,,x\n"
           + f"Reciprocal reading,NGRT standardised score,{AUTUMN},2025-09-01,2025-12-19,111601,,,2025-07-01,,,,x\n")
    _fixture(tmp_path / "extracts")
    (tmp_path / "trials.csv").write_text(bad, encoding="utf-8")
    reg = registry.load_registry(registry.registry_path(tmp_path / "extracts", environ={}))
    assert sorted(p.line for p in reg.problems) == [4, 5, 6] and len(reg.rounds) == 2
    with warehouse.connect(tmp_path / "warehouse.duckdb") as con:
        loading.load_folder(con, tmp_path / "extracts", KEY)
        result = trial_store.refresh(con, reg, today=TODAY)
        trial_store.store(con, result)
        messages = con.execute(warehouse.sql("registry_messages")).df()
        progress = con.execute(warehouse.sql("registry_progress")).df()
        table = con.execute(warehouse.sql("trial_results")).df()
    # the good rounds still give their rows
    assert {AUTUMN, SPRING} <= set(table["round"])
    rows = site.registry_report(messages, progress)
    files = site.build_site(pd.DataFrame(columns=table.columns), {}, pd.DataFrame(), "1 November 2026", "now",
                            registry_rows=rows)
    report = pd.read_csv(pd.io.common.BytesIO(files["registry_report.csv"]), dtype=str, encoding="utf-8-sig")
    text = " ".join(report["What to do"])
    page = files["load-report.html"].decode()
    for line, column in ((4, "start_date"), (5, "schools"), (6, "round")):
        assert f"trials.csv line {line}, column {column}" in text, (line, column, text)
        assert f"trials.csv line {line}, column {column}" in page
