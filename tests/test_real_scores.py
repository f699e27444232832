"""Plausibility on real school data (tests/fixtures/real): no genuine score set aside, a planted typo is."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from microtrials.ingest import plausibility
from microtrials.ingest import warehouse
from microtrials.ingest.loading import load_folder
from microtrials.stats.trials import analyse_trial
from tests.conftest import FIXTURES

REAL = FIXTURES / "real"
# Data set -> (rows, schools) as tests/fixtures/real/make_fixtures.R wrote them.
DATA_SETS = {
    "chem97": (31022, 2410),
    "star": (26796, 80),
    "nlschools": (2287, 133),
    "scotssec": (3435, 19),
    "exam": (4059, 65),
}
KEY = b"k" * 32


def real(name: str) -> pd.DataFrame:
    frame = pd.read_csv(REAL / f"{name}.csv.gz", dtype={"school_urn": str, "pupil_id": str})
    assert (len(frame), frame["school_urn"].nunique()) == DATA_SETS[name]
    return frame


def judge(frame: pd.DataFrame) -> plausibility.Verdict:
    """The loader's rules on a whole data set, each trial judged against all its schools' scores."""
    frame = frame.assign(line=np.arange(2, len(frame) + 2))
    keys = {(i, m): f"{i}\x1f{m}" for i, m in zip(frame["intervention"], frame["outcome_measure"])}
    spreads = {
        (keys[i, m], column): plausibility.spread_of(group[column].to_numpy(dtype=float))
        for (i, m), group in frame.groupby(["intervention", "outcome_measure"])
        for column in plausibility.COLUMNS
    }
    return plausibility.judge_file(frame, keys, spreads, {})


def gross_school_by_school(frame: pd.DataFrame, column: str) -> int:
    """Gross errors when each school's scores of a trial are judged on their own (as when one
    school has sent so far): the rule with one :class:`Spread` per school, as arrays."""
    units = ["school_urn", "intervention", "outcome_measure"]
    scores = frame[units].assign(score=frame[column].astype(float), magnitude=frame[column].abs())
    by = scores.groupby(units)
    per_unit = by["score"].quantile(list(plausibility.QUANTILES)).unstack()
    per_unit["abs_q3"] = by["magnitude"].quantile(0.75)
    per_unit["count"] = by["score"].count()
    rows = scores.join(per_unit, on=units)
    spread = plausibility.Spread(rows["count"].to_numpy(), *(rows[q].to_numpy() for q in plausibility.QUANTILES),
                                 rows["abs_q3"].to_numpy())
    return int(spread.gross(rows["score"].to_numpy()).sum())


def old_rule(frame: pd.DataFrame, column: str) -> int:
    """How many scores the removed rule set aside: > 6 robust SDs (1.4826 MAD) from the median of the
    trial's scores in the school's own file, when it had at least 10 with MAD > 0."""
    count = 0
    for _, scores in frame.groupby(["school_urn", "intervention", "outcome_measure"])[column]:
        x = scores.dropna().to_numpy(dtype=float)
        if len(x) < 10:
            continue
        median = np.median(x)
        sd = 1.4826 * np.median(np.abs(x - median))
        count += int(sd > 0 and (np.abs(x - median) > 6 * sd).sum())
    return count


@pytest.mark.parametrize("name", sorted(DATA_SETS))
def test_no_genuine_score_of_a_real_data_set_is_set_aside(name):
    frame = real(name)
    whole = judge(frame)
    assert whole.set_aside.empty and not whole.other_scale
    # even a trial only one school has sent yet (each school judged on its own scores) keeps them all
    assert gross_school_by_school(frame, "outcome") == gross_school_by_school(frame, "baseline") == 0
    print(f"{name}: {len(frame)} rows; set aside before: outcome {old_rule(frame, 'outcome')}, baseline "
          f"{old_rule(frame, 'baseline')}; now 0; to confirm (unusual): {len(whole.unusual)}")


def test_the_removed_rule_did_drop_genuine_scores():
    """The per-file 6-robust-SD rule this replaces set aside real results (issue 19): still true of the data."""
    assert old_rule(real("star"), "outcome") > 0 and old_rule(real("chem97"), "outcome") > 0


@pytest.mark.parametrize("name", sorted(DATA_SETS))
def test_a_planted_typo_in_real_data_is_the_one_value_set_aside(name):
    frame = real(name)
    school = frame["school_urn"].iloc[len(frame) // 2]
    row, other = frame.index[(frame["school_urn"] == school) & frame["outcome"].notna()][:2]
    frame.loc[row, "outcome"] = 99999999
    frame.loc[other, "baseline"] = -99999999
    verdict = judge(frame)
    assert sorted(zip(verdict.set_aside["line"], verdict.set_aside["column_name"])) == sorted(
        [(row + 2, "outcome"), (other + 2, "baseline")]
    )
    assert set(verdict.set_aside["rule"]) == {plausibility.GROSS}
    assert gross_school_by_school(frame, "outcome") == gross_school_by_school(frame, "baseline") == 1


def split_into_school_files(frame: pd.DataFrame, folder) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for urn, rows in frame.groupby("school_urn"):
        rows.to_csv(folder / f"{urn}.csv", index=False)


def trial_result(con, measure: str):
    pupils = con.execute(
        "SELECT school_urn, CASE arm WHEN 'intervention' THEN 1 ELSE 0 END AS arm, outcome, baseline, "
        "CAST(NULL AS DOUBLE) AS fsm, intervention, outcome_measure FROM pupils WHERE outcome_measure = ?",
        [measure],
    ).df()
    return analyse_trial(pupils)


@pytest.mark.slow
def test_a_typo_loaded_on_day_one_with_its_whole_real_trial_is_set_aside_and_the_trial_estimated(tmp_path):
    """Issue 19: a 2-pupil file with 99999999, loaded on day one with 16 schools of its trial."""
    star = real("star")
    grade_k = star[star["outcome_measure"] == "SAT reading grade K"]
    schools = sorted(grade_k["school_urn"].unique())[:16]
    trial = grade_k[grade_k["school_urn"].isin(schools)]
    tiny = pd.DataFrame({
        "school_urn": ["199999", "199999"], "pupil_id": ["T1", "T2"], "intervention": "Small classes",
        "outcome_measure": "SAT reading grade K", "arm": ["intervention", "control"],
        "outcome": [99999999, 480], "baseline": [500, 510],
    })
    split_into_school_files(pd.concat([trial, tiny]), tmp_path / "extracts")
    con = warehouse.connect(tmp_path / "warehouse.duckdb")
    reports = {r.file_name: r for r in load_folder(con, tmp_path / "extracts", KEY)}
    assert {r.status for r in reports.values()} == {"loaded"}
    assert reports["199999.csv"].quarantined_by_reason == {"implausible value": 1}
    assert sum(sum(r.quarantined_by_reason.values()) for r in reports.values()) == 1  # no genuine score
    assert con.execute("SELECT count(*), count(outcome) FROM pupils WHERE school_urn = '199999'").fetchone() == (2, 1)
    result = trial_result(con, "SAT reading grade K")
    assert result.status == "published" and result.pupils_randomised == len(trial) + 2
    expected = analyse_trial(pd.concat([trial, tiny.assign(outcome=[np.nan, 480])]).assign(
        arm=lambda f: (f["arm"] == "intervention").astype(int), fsm=np.nan))
    assert result.headline.g == pytest.approx(expected.headline.g, abs=1e-12)


@pytest.mark.slow
def test_loading_a_whole_real_data_set_sets_aside_no_score(tmp_path):
    """STAR (80 schools, four grades, 26,796 rows) through the loader, one file per school."""
    split_into_school_files(real("star"), tmp_path / "extracts")
    con = warehouse.connect(tmp_path / "warehouse.duckdb")
    reports = load_folder(con, tmp_path / "extracts", KEY)
    assert {r.status for r in reports} == {"loaded"}
    assert con.execute("SELECT count(*) FROM quarantine").fetchone() == (0,)
    stored = con.execute("SELECT count(*), count(outcome), count(baseline) FROM pupils").fetchone()
    frame = real("star")
    assert stored == (len(frame), frame["outcome"].notna().sum(), frame["baseline"].notna().sum())


def test_fixtures_stay_small():
    assert sum(p.stat().st_size for p in REAL.glob("*.csv.gz")) < 2_000_000
    with gzip.open(REAL / "star.csv.gz", "rt") as text:
        assert text.readline().strip() == "school_urn,pupil_id,intervention,outcome_measure,arm,outcome,baseline"
