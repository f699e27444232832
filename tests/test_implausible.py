"""Implausible outcomes: set aside as values (ITT), judged against the trial across the warehouse."""

from __future__ import annotations

import pytest

from microtrials import warehouse
from microtrials.loading import load_file
from tests.conftest import EXTRACT_HEADER, pupil_rows

KEY = b"k" * 32
OUTCOME = EXTRACT_HEADER.index("outcome")


@pytest.fixture
def con(tmp_path):
    connection = warehouse.connect(tmp_path / "warehouse.duckdb")
    yield connection
    connection.close()


def test_an_implausible_outcome_is_blanked_and_the_pupil_stays_randomised(con, write_extract):
    rows = pupil_rows(30)
    rows[5][OUTCOME] = "99999999"
    report = load_file(con, write_extract("111601.csv", rows), KEY)
    assert (report.status, report.rows_loaded, report.rows_quarantined) == ("loaded", 30, 0)
    assert con.execute("SELECT count(*), count(outcome), max(outcome) FROM pupils").fetchone() == (30, 29, 109.0)
    assert con.execute("SELECT line, column_name, rule FROM quarantine").fetchall() == [
        (7, "outcome", "implausible value")
    ]


def load_schools(con, write_extract, count=4, n=20):
    for k in range(count):
        urn = f"11160{k + 1}"
        load_file(con, write_extract(f"{urn}.csv", pupil_rows(n, urn=urn)), KEY)


def test_a_typo_in_a_tiny_new_file_is_judged_against_the_trial_at_other_schools(con, write_extract):
    """Finding 3: a 2-pupil file cannot judge itself; the trial's 80 scores elsewhere can."""
    load_schools(con, write_extract)
    rows = pupil_rows(2, urn="111699")
    rows[0][OUTCOME] = "99999999"
    report = load_file(con, write_extract("111699.csv", rows), KEY)
    assert (report.status, report.rows_loaded) == ("loaded", 2)
    assert con.execute("SELECT count(*), count(outcome) FROM pupils WHERE school_urn = '111699'").fetchone() == (2, 1)
    # outcomes at other schools: 81..100 at each; median 90.5, MAD 5 -> 6 robust SDs = 44.5
    q = con.execute("SELECT line, column_name, rule, reason FROM quarantine").fetchall()
    assert [r[:3] for r in q] == [(2, "outcome", "implausible value")]
    assert "(90.5) of this trial's outcome scores at other schools" in q[0][3] and "99999999" not in q[0][3]


def test_a_whole_file_on_another_scale_is_not_loaded_and_says_why(con, write_extract):
    load_schools(con, write_extract)
    rows = pupil_rows(20, urn="111699")
    for row in rows:
        row[OUTCOME] = str(float(row[OUTCOME]) * 10)
    report = load_file(con, write_extract("111699.csv", rows), KEY)
    assert report.status == "rejected"
    assert "as if they were on another scale" in report.reason
    assert con.execute("SELECT count(*) FROM pupils WHERE school_urn = '111699'").fetchone() == (0,)
    # its earlier, plausible delivery stays when a x10 file comes later
    load_file(con, write_extract("111699.csv", pupil_rows(20, urn="111699")), KEY)
    again = load_file(con, write_extract("111699-v2.csv", rows), KEY)
    assert again.status == "rejected" and "another scale" in again.reason and "not replaced" not in again.reason
    assert con.execute("SELECT count(*), max(outcome) FROM pupils WHERE school_urn = '111699'").fetchone() == (20, 100.0)


def test_a_genuine_school_is_not_flagged(con, write_extract):
    load_schools(con, write_extract)
    rows = pupil_rows(20, urn="111699")
    for row in rows:
        row[OUTCOME] = str(float(row[OUTCOME]) + 8)  # a school doing better: well within the trial's spread
    report = load_file(con, write_extract("111699.csv", rows), KEY)
    assert (report.status, report.rows_loaded, report.quarantined_by_reason) == ("loaded", 20, {})
