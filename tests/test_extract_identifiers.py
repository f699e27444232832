"""Trial-name cells that look like a pupil identifier, a name or a date never become trials (finding 2)."""

from __future__ import annotations

import shutil

import duckdb
import pytest

from microtrials.ingest import warehouse
from microtrials.ingest.extracts import read_extract, validate
from microtrials.ingest.loading import load_file, load_report_frame
from tests.conftest import EXTRACT_HEADER, SHARED, extract_csv, pupil_rows
from tests.helpers.cli import run_cli

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


@pytest.mark.slow
def test_no_identifier_name_reaches_any_output_of_a_run(tmp_path):
    """After `microtrials run`: the raw id and the dated name are in no published file, warehouse
    table, feedback file or Dagster storage, nor on the terminal."""
    extracts = tmp_path / "extracts"
    shutil.copytree(SHARED / "reference" / "extracts", extracts)
    path = extracts / "111601.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    other_id = lines[12].split(",")[1].strip('"')
    cells = lines[5].split(",")
    cells[2] = f'"{other_id}"'
    lines[5] = ",".join(cells)
    cells = lines[6].split(",")
    cells[3] = f'"{DOB}"'
    lines[6] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    done = run_cli(tmp_path, extracts, "test-pupil-key-not-secret-7c1e9a04b25d36f8")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "evidence_table.csv").is_file()
    secrets = [other_id, DOB, "01/02/2015"]
    leaks = []
    for found in tmp_path.rglob("*"):
        if found.is_file() and not found.is_relative_to(extracts):
            data = found.read_bytes()
            leaks += [(str(found.relative_to(tmp_path)), s) for s in secrets if s.encode() in data]
            leaks += [(str(found.relative_to(tmp_path)), s) for s in secrets if s in found.name]
    assert not leaks, leaks[:5]
    assert not [s for s in secrets if s in done.stdout + done.stderr]
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True)
    try:
        stored = stored_text(con)
        rules = con.execute("SELECT line, column_name, rule FROM quarantine WHERE source_file = '111601.csv'").fetchall()
    finally:
        con.close()
    assert not [s for s in secrets if s in stored]
    assert (6, "intervention", "intervention looks like an identifier") in rules
    assert (7, "outcome_measure", "outcome_measure looks like an identifier") in rules


def test_bidi_and_control_characters_are_stripped_from_names_with_a_warning(write_extract):
    """Finding 16: a U+202E override would show a trial name reversed on the site."""
    rows = pupil_rows(12, intervention="Reading")
    for row in rows[:3]:
        row[COLUMN["intervention"]] = "\u202eReading\u202c"
    rows[3][COLUMN["outcome_measure"]] = "NG\u200bRT"
    result = validate(read_extract(write_extract("111601.csv", rows)))
    assert result.trials == [("Reading", "NGRT")]
    assert set(result.good["intervention"].to_pylist()) == {"Reading"}
    w = result.warnings.to_pandas()
    assert w[["line", "column_name", "rule"]].values.tolist() == [
        [2, "intervention", "intervention had invisible characters"],
        [3, "intervention", "intervention had invisible characters"],
        [4, "intervention", "intervention had invisible characters"],
        [5, "outcome_measure", "outcome_measure had invisible characters"],
    ]
    assert result.quarantine.num_rows == 0


def test_a_file_without_a_final_line_break_warns_it_may_be_cut_off(write_extract):
    """Finding 8: `78` cut to `7` at the end of a file reads as a number; the officer is warned."""
    text = extract_csv(pupil_rows(12))
    cut = text[:-2]  # last outcome/... value cut short, no final line break
    result = validate(read_extract(write_extract("111601.csv", cut)))
    w = result.warnings.to_pandas()
    assert w[["line", "rule"]].values.tolist() == [[13, "no line break at the end"]]
    assert "line 13, the last line" in w["reason"][0] and "may have been cut off" in w["reason"][0]
    assert result.good.num_rows == 12 and result.rows_with_warnings == 1
    whole = validate(read_extract(write_extract("111602.csv", text)))
    assert whole.warnings.num_rows == 0
