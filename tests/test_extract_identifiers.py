"""Trial-name cells that look like a pupil identifier, a name or a date never become trials (finding 2)."""

from __future__ import annotations

from microtrials import warehouse
from microtrials.extracts import read_extract, validate
from microtrials.loading import load_file, load_report_frame
from tests.conftest import EXTRACT_HEADER, pupil_rows

COLUMN = {c: i for i, c in enumerate(EXTRACT_HEADER)}
KEY = b"k" * 32
DOB = "Jane Smith DOB 01/02/2015"


def stored_text(con) -> str:
    text = []
    for (name,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall():
        frame = con.execute(f'SELECT * FROM "{name}"').df()
        text.append(frame.astype(str).to_csv())
    return "\n".join(text)


def bad_name_rows():
    rows = pupil_rows(40)
    rows[4][COLUMN["intervention"]] = rows[10][COLUMN["pupil_id"]]  # another pupil's id (line 6)
    rows[5][COLUMN["outcome_measure"]] = DOB  # line 7
    rows[6][COLUMN["intervention"]] = "x" * 5000  # line 8
    return rows


def test_identifier_like_trial_names_are_quarantined_unquoted(write_extract, tmp_path):
    rows = bad_name_rows()
    path = write_extract("111601.csv", rows)
    result = validate(read_extract(path))
    q = result.quarantine.to_pandas()
    assert q[["line", "column_name", "rule"]].values.tolist() == [
        [6, "intervention", "intervention looks like an identifier"],
        [7, "outcome_measure", "outcome_measure looks like an identifier"],
        [8, "intervention", "intervention looks like an identifier"],
    ]
    assert result.trials == [("Reading", "NGRT")]
    con = warehouse.connect(tmp_path / "w.duckdb")
    report = load_file(con, path, KEY)
    everything = stored_text(con) + load_report_frame([report]).to_csv() + str(report) + q.to_csv()
    con.close()
    assert report.rows_loaded == 37
    for secret in (rows[10][COLUMN["pupil_id"]], DOB, "01/02/2015", "Jane Smith", "x" * 101):
        assert secret not in everything


def test_a_genuine_two_intervention_file_is_untouched(write_extract):
    rows = pupil_rows(30) + pupil_rows(30, intervention="Maths Boost 2", measure="PiRA 2024", start=31)
    rows += pupil_rows(2, intervention="Talk for Writing (KS2)", measure="NGRT", start=61)
    result = validate(read_extract(write_extract("111601.csv", rows)))
    assert result.quarantine.num_rows == 0
    assert len(result.trials) == 3


def test_a_small_file_of_one_rare_dated_trial_is_not_judged_rare(write_extract):
    """With no dominant name (under 10 rows) rarity says nothing: a 2024 cohort name loads."""
    rows = pupil_rows(4, intervention="Reading 2024")
    result = validate(read_extract(write_extract("111601.csv", rows)))
    assert result.quarantine.num_rows == 0
