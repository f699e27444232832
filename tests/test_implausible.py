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
