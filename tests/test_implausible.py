"""Plausible scores: a declared range, else gross errors judged across the whole trial (ITT: values, not pupils)."""

from __future__ import annotations

import numpy as np
import pytest

from microtrials.publish import history
from microtrials.ingest import plausibility
from microtrials.ingest import warehouse
from microtrials.ingest.loading import load_file, load_folder
from microtrials.ingest.registry import read_registry
from tests.conftest import EXTRACT_HEADER, pupil_rows

KEY = b"k" * 32
OUTCOME = EXTRACT_HEADER.index("outcome")
BASELINE = EXTRACT_HEADER.index("baseline")
REGISTRY_HEADER = "intervention,outcome_measure,round,start_date,schools,aliases,outcome_min,outcome_max,baseline_min,baseline_max"


@pytest.fixture
def con(tmp_path):
    connection = warehouse.connect(tmp_path / "warehouse.duckdb")
    yield connection
    connection.close()


def declare(con, *rows: str) -> None:
    """Make a registry with these rows (after the header) the warehouse's current one."""
    registry = read_registry(("\n".join([REGISTRY_HEADER, *rows]) + "\n").encode())
    assert registry.problems == ()
    history.store_rounds(con, registry)


def quarantine(con):
    return con.execute("SELECT school_urn, line, column_name, rule, reason FROM quarantine ORDER BY school_urn, line").fetchall()


def load_schools(con, write_extract, count=4, n=20):
    for k in range(count):
        urn = f"11160{k + 1}"
        load_file(con, write_extract(f"{urn}.csv", pupil_rows(n, urn=urn)), KEY)


def test_a_declared_range_sets_aside_only_the_values_outside_it(con, write_extract):
    """Outcomes 81..110 and baselines 76..99; the registry says outcomes run 85-105 and baselines from 80."""
    declare(con, "Reading Programme,NGRT,,2025-09-01,111601,Reading,85,105,80,")
    rows = pupil_rows(30)
    report = load_file(con, write_extract("111601.csv", rows), KEY)
    outcomes = np.array([float(r[OUTCOME]) for r in rows])
    baselines = np.array([float(r[BASELINE]) for r in rows])
    low_or_high = (outcomes < 85) | (outcomes > 105)
    assert (report.status, report.rows_loaded, report.rows_quarantined) == ("loaded", 30, 0)
    assert report.quarantined_by_reason == {"outside the declared range": int(low_or_high.sum())}
    assert report.warned_by_reason == {"outside the declared range": int((baselines < 80).sum())}
    stored = con.execute("SELECT count(*), count(outcome), min(outcome), max(outcome), count(baseline), min(baseline) "
                         "FROM pupils").fetchone()
    assert stored == (30, int((~low_or_high).sum()), 85.0, 105.0, int((baselines >= 80).sum()), 80.0)
    entries = quarantine(con)
    assert [e[1] for e in entries] == [i + 2 for i in np.flatnonzero(low_or_high)]
    assert all("(85 to 105)" in e[4] and e[3] == "outside the declared range" for e in entries)
    reasons = con.execute("SELECT DISTINCT reason FROM load_warnings WHERE column_name = 'baseline'").fetchall()
    assert len(reasons) == 1 and "(at least 80)" in reasons[0][0]


def test_a_declared_range_keeps_a_value_no_trial_statistic_could(con, write_extract):
    """A declared fact replaces the guess: 1000 on a declared 0-1000 scale stays, even among scores near 90."""
    declare(con, "Reading,NGRT,,2025-09-01,111601,,0,1000,,")
    rows = pupil_rows(30)
    rows[3][OUTCOME] = "1000"
    report = load_file(con, write_extract("111601.csv", rows), KEY)
    assert report.quarantined_by_reason == {} and report.warned_by_reason == {}
    assert con.execute("SELECT max(outcome) FROM pupils").fetchone() == (1000.0,)


def test_a_gross_typo_is_blanked_and_the_pupil_stays_randomised(con, write_extract):
    rows = pupil_rows(30)
    rows[5][OUTCOME] = "99999999"
    report = load_file(con, write_extract("111601.csv", rows), KEY)
    assert (report.status, report.rows_loaded, report.rows_quarantined) == ("loaded", 30, 0)
    assert con.execute("SELECT count(*), count(outcome), max(outcome) FROM pupils").fetchone() == (30, 29, 109.0)
    assert [e[1:4] for e in quarantine(con)] == [(7, "outcome", "implausible value")]


def test_a_typo_in_a_tiny_new_file_is_judged_against_the_trial_at_other_schools(con, write_extract):
    """A 2-pupil file cannot judge itself; the trial's 80 scores elsewhere can."""
    load_schools(con, write_extract)
    rows = pupil_rows(2, urn="111699")
    rows[0][OUTCOME] = "99999999"
    report = load_file(con, write_extract("111699.csv", rows), KEY)
    assert (report.status, report.rows_loaded) == ("loaded", 2)
    assert con.execute("SELECT count(*), count(outcome) FROM pupils WHERE school_urn = '111699'").fetchone() == (2, 1)
    entries = quarantine(con)
    assert [e[:4] for e in entries] == [("111699", 2, "outcome", "implausible value")]
    # scores at every school: 81..100 four times plus the file's 82 (and the typo): median 90.5
    assert "median 90.5" in entries[0][4] and "99999999" not in entries[0][4]


def test_a_typo_loaded_on_day_one_with_the_rest_of_its_trial_is_set_aside(con, write_extract, tmp_path):
    """Issue 19: the first load of a whole trial is judged too (after the whole batch is read)."""
    for k in range(16):
        urn = f"1116{k + 10}"
        write_extract(f"{urn}.csv", pupil_rows(20, urn=urn))
    rows = pupil_rows(2, urn="111699")
    rows[1][OUTCOME] = "99999999"
    write_extract("111699.csv", rows)
    reports = {r.file_name: r for r in load_folder(con, tmp_path / "extracts", KEY)}
    assert {r.status for r in reports.values()} == {"loaded"}
    assert [(e[0], e[1], e[3]) for e in quarantine(con)] == [("111699", 3, "implausible value")]
    assert con.execute("SELECT count(*), count(outcome), max(outcome) FROM pupils").fetchone() == (322, 321, 100.0)


def test_an_unusual_score_is_loaded_and_listed_for_the_school_to_confirm(con, write_extract):
    load_schools(con, write_extract)
    rows = pupil_rows(20, urn="111699")
    rows[4][OUTCOME] = "150"  # 59.5 from the median 90.5, IQR ~ 9.75: > 3 IQRs, not a gross error
    report = load_file(con, write_extract("111699.csv", rows), KEY)
    assert report.quarantined_by_reason == {} and report.warned_by_reason == {"unusual value": 1}
    assert con.execute("SELECT count(outcome), max(outcome) FROM pupils WHERE school_urn = '111699'").fetchone() == (20, 150.0)
    reason = con.execute("SELECT reason FROM load_warnings WHERE rule = 'unusual value'").fetchone()[0]
    assert "it was loaded as it is; please check it is right" in reason


def test_a_whole_file_on_another_scale_is_not_loaded_and_says_why(con, write_extract):
    load_schools(con, write_extract)
    rows = pupil_rows(20, urn="111699")
    for row in rows:
        row[OUTCOME] = str(float(row[OUTCOME]) * 100)
    report = load_file(con, write_extract("111699.csv", rows), KEY)
    assert report.status == "rejected"
    assert "as if they were on another scale" in report.reason
    assert con.execute("SELECT count(*) FROM pupils WHERE school_urn = '111699'").fetchone() == (0,)
    # its earlier, plausible delivery stays when a x100 file comes later
    load_file(con, write_extract("111699.csv", pupil_rows(20, urn="111699")), KEY)
    again = load_file(con, write_extract("111699-v2.csv", rows), KEY)
    assert again.status == "rejected" and "another scale" in again.reason and "not replaced" not in again.reason
    assert con.execute("SELECT count(*), max(outcome) FROM pupils WHERE school_urn = '111699'").fetchone() == (20, 100.0)


def test_a_file_outside_the_declared_range_is_on_another_scale(con, write_extract):
    """Percentages (0-100) sent for a trial declared on a 0-10 scale: the file's trial is not loaded."""
    declare(con, "Reading,NGRT,,2025-09-01,111601,,0,10,,")
    report = load_file(con, write_extract("111601.csv", pupil_rows(20)), KEY)
    assert report.status == "rejected" and "outside the range the trial registry declares (0 to 10)" in report.reason


def test_a_genuine_school_is_not_flagged(con, write_extract):
    load_schools(con, write_extract)
    rows = pupil_rows(20, urn="111699")
    for row in rows:
        row[OUTCOME] = str(float(row[OUTCOME]) + 8)  # a school doing better: well within the trial's spread
    report = load_file(con, write_extract("111699.csv", rows), KEY)
    assert (report.status, report.rows_loaded, report.quarantined_by_reason, report.warned_by_reason) == (
        "loaded", 20, {}, {}
    )


@pytest.mark.parametrize(
    ("values", "gross"),
    [
        ([7.0] * 30 + [99999999.0], [False] * 30 + [True]),  # all equal: the digits rule alone
        ([1.0] * 25 + [0.0] * 5 + [100.0], [False] * 30 + [True]),  # 3 digits where the upper quartile has 1
        ([1.0] * 25 + [0.0] * 5 + [10.0], [False] * 31),  # one more digit only: kept
        (list(range(300, 630)) + [5800.0], [False] * 330 + [True]),  # 580 typed 5800
        (list(range(300, 630)) + [1000.0], [False] * 331),  # beyond the trial's scores, not far enough
    ],
)
def test_the_gross_error_rule(values, gross):
    x = np.array(values)
    assert plausibility.spread_of(x).gross(x).tolist() == gross


def test_fewer_than_ten_scores_are_not_judged():
    x = np.array([80.0] * 8 + [99999999.0])
    assert not plausibility.spread_of(x).gross(x).any()


def test_the_run_summary_counts_an_outcome_set_aside_in_quarantine_and_a_baseline_warning_per_row(
        con, write_extract):
    """New user: outcome 250 (line 5) went to quarantine and baseline 12 (line 9) was blanked with a
    warning, yet the summary said "rows set aside (quarantine): 0" and counted the baseline's row warning
    as a warning about the whole file. One definition each: rows in quarantine (kept out, or loaded with
    the outcome set aside), rows loaded with a warning, file-level warnings."""
    from microtrials.cli import _file_lines
    from microtrials.ingest.loading import load_report_frame

    declare(con, "Reading Programme,NGRT,,2025-09-01,111601,Reading,69,141,69,141")
    rows = pupil_rows(30)
    rows[3][OUTCOME], rows[7][BASELINE] = "250", "12"
    rows[10][EXTRACT_HEADER.index("arm")] = "??"  # a row kept out by validation
    report = load_file(con, write_extract("111601.csv", rows), KEY)
    assert (report.rows_quarantined, report.outcomes_set_aside, report.rows_with_warnings) == (1, 1, 1)
    in_quarantine = con.execute("SELECT count(DISTINCT line) FROM quarantine").fetchone()[0]
    lines = _file_lines(load_report_frame([report]), write_extract("x.csv", rows).parent, report.rows_with_warnings)
    assert lines[-1] == (f"rows set aside (quarantine): {in_quarantine} (1 kept out; 1 loaded with the outcome set "
                         "aside, the pupil kept as randomised); rows loaded with a warning: 1; files with a warning "
                         "about the whole file: 0")
    assert not any(line.startswith("  warning ") for line in lines)

