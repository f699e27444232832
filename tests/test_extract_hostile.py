"""Hostile and unlucky extracts (issue 15): stray quotes never lose rows, swapped columns never store
an identifier, implausible scores are caught."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from microtrials.ingest import warehouse
from microtrials.ingest.extracts import ExtractRejected, read_extract, validate
from microtrials.ingest.loading import load_file, load_report_frame
from tests.conftest import EXTRACT_HEADER, extract_csv, pupil_rows
from tests.helpers.examples import examples

KEY = b"test-key"
COLUMN = {name: i for i, name in enumerate(EXTRACT_HEADER)}


def checked(path):
    return validate(read_extract(path))


def data_lines(text: str) -> int:
    """Lines after the header holding anything but commas and spaces (an independent count)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")[1:]
    return sum(1 for line in lines if line.strip(" ,\t"))


# ---- a malformed file never loses rows silently (issue 15, point 4) ----------------------------


def test_a_stray_quote_on_row_10_closed_on_row_30_loses_no_row(write_extract, tmp_path):
    rows = pupil_rows(60)
    lines = extract_csv(rows).splitlines(keepends=True)  # lines[k] is data row k (line k + 1)
    lines[10] = lines[10].replace(",Reading,", ',"Reading,', 1)
    lines[30] = lines[30].replace(",NGRT,", ',NGRT",', 1)
    text = "".join(lines)
    path = write_extract("111601.csv", text)
    result = checked(path)
    assert result.rows_read == data_lines(text) == 60
    assert result.quarantine["line"].to_pylist() == [11, 31]
    assert set(result.quarantine["rule"].to_pylist()) == {"unmatched quote"}
    assert "lines 11 to 31 ran together" in result.quarantine["reason"][0].as_py()
    assert result.good["line"].to_pylist() == [n for n in range(2, 62) if n not in (11, 31)]
    assert set(result.good["intervention"].to_pylist()) == {"Reading"}  # no merged value loaded as a trial
    con = warehouse.connect(tmp_path / "w.duckdb")
    report = load_file(con, path, KEY)
    assert (report.status, report.rows_read, report.rows_loaded, report.rows_quarantined) == ("loaded", 60, 58, 2)
    assert con.execute("SELECT count(*) FROM pupils").fetchone()[0] == 58
    con.close()


def test_an_unclosed_quote_does_not_swallow_the_rest_of_the_file(write_extract):
    rows = pupil_rows(60)
    lines = extract_csv(rows).splitlines(keepends=True)
    lines[30] = lines[30].replace(",Reading,", ',"Reading,', 1)  # row 30 (line 31), never closed
    text = "".join(lines)
    result = checked(write_extract("111601.csv", text))
    assert result.rows_read == data_lines(text) == 60
    assert result.quarantine["line"].to_pylist() == [31]
    assert "lines 31 to 61 ran together" in result.quarantine["reason"][0].as_py()
    assert result.good["line"].to_pylist() == list(range(2, 31)) + list(range(32, 62))  # 59 rows


def test_an_unclosed_quote_before_200_kb_of_pasted_text_sets_lines_aside_not_the_run(write_extract):
    """Red team T10: the csv module gives up on a value over 131,072 characters; the file's lines are
    still each read on their own (the pupils load, the pasted lines are set aside), nothing is raised."""
    rows = pupil_rows(20)
    lines = extract_csv(rows).splitlines(keepends=True)
    lines[5] = lines[5].replace(",Reading,", ',"Reading,', 1)  # line 6, never closed
    text = "".join(lines) + "".join("pasted comment line " * 10 + "\n" for _ in range(1000))
    assert len(text) > 200_000
    result = checked(write_extract("111601.csv", text))
    assert result.rows_read == data_lines(text) == 1020
    assert result.good["line"].to_pylist() == [n for n in range(2, 22) if n != 6]  # 19 pupils
    assert result.quarantine.num_rows == 1001
    assert result.quarantine["rule"][0].as_py() == "unmatched quote"
    assert "lines 6 to 1021 ran together" in result.quarantine["reason"][0].as_py()
    assert set(result.quarantine["rule"].to_pylist()[1:]) == {"wrong number of values"}


def test_a_header_cell_over_the_csv_field_limit_rejects_the_file_with_its_name(write_extract):
    text = extract_csv(pupil_rows(3)).replace("baseline", '"' + "x" * 140_000 + '"', 1)
    with pytest.raises(ExtractRejected, match=r"111601.csv: the header row could not be read"):
        read_extract(write_extract("111601.csv", text))


def test_a_quoted_comma_on_one_line_is_still_one_value(write_extract):
    rows = pupil_rows(3, intervention="Reading, phonics first")
    result = checked(write_extract("111601.csv", rows))
    assert result.quarantine.num_rows == 0 and result.trials == [("Reading, phonics first", "NGRT")]


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 19), st.integers(0, 80)), min_size=1, max_size=4),
       st.sampled_from(["\n", "\r\n", "\r"]))
def test_stray_quotes_anywhere_lose_no_line_without_one(write_extract, quotes, ending):
    """Quotes dropped at random places: rows_read is the file's data lines, every line is loaded or
    set aside, and every line without a quote character loads."""
    lines = extract_csv(pupil_rows(20)).splitlines()
    for row, position in quotes:
        text = lines[row + 1]
        position = min(position, len(text))
        lines[row + 1] = text[:position] + '"' + text[position:]
    text = ending.join(lines) + ending
    result = checked(write_extract("111601.csv", text))
    assert result.rows_read == data_lines(text) == 20
    loaded, set_aside = set(result.good["line"].to_pylist()), set(result.quarantine["line"].to_pylist())
    assert loaded.isdisjoint(set_aside) and loaded | set_aside == set(range(2, 22))
    assert {n for n in range(2, 22) if '"' not in lines[n - 1]} <= loaded


# ---- swapped columns never store or publish an identifier (issue 15, point 1) ------------------

RAW_IDS = [f"P11131100{i:02d}" for i in range(1, 61)]


def pupils_with_ids(ids, interventions=("Reading",)):
    rows = pupil_rows(len(ids))
    for index, (row, pupil_id) in enumerate(zip(rows, ids)):
        row[COLUMN["pupil_id"]] = pupil_id
        row[COLUMN["intervention"]] = interventions[index % len(interventions)]
    return rows


def swapped_header(other):
    header = list(EXTRACT_HEADER)
    i, j = header.index("pupil_id"), header.index(other)
    header[i], header[j] = header[j], header[i]
    return header


def stored_text(con) -> str:
    """Every value of every warehouse table as text (hashes and delivery ids left out: hex digits)."""
    text = []
    for (name,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall():
        frame = con.execute(f'SELECT * FROM "{name}"').df()  # names come from the catalogue
        frame = frame.drop(columns=[c for c in ("pupil_key", "delivery_id") if c in frame])
        text.append(frame.astype(str).to_csv())
    return "\n".join(text)


@pytest.mark.parametrize("other", ["intervention", "outcome", "arm", "gender"])
@pytest.mark.parametrize("size", [60, 12, 3])
def test_a_file_with_pupil_id_swapped_stores_no_raw_id(tmp_path, write_extract, other, size):
    ids = RAW_IDS[:size]
    path = write_extract("111601.csv", pupils_with_ids(ids), header=swapped_header(other))
    con = warehouse.connect(tmp_path / "w.duckdb")
    report = load_file(con, path, KEY)
    stored = stored_text(con) + load_report_frame([report]).to_csv() + str(report)
    con.close()
    assert not [i for i in ids if i in stored]
    if size >= 12 or other != "outcome":
        assert report.status == "rejected"
        assert report.reason.startswith("111601.csv: columns may be swapped: ")
        assert f"'{other}'" in report.reason
    else:  # 3 rows: ids in the outcome column are not numbers; kept as no post-test, never quoted
        assert report.status == "loaded" and report.rows_with_warnings == 3


def test_numeric_pupil_ids_swapped_with_outcome_are_rejected(tmp_path, write_extract):
    ids = [str(1113110001 + i) for i in range(60)]  # numbers: they would load as outcome scores
    path = write_extract("111601.csv", pupils_with_ids(ids), header=swapped_header("outcome"))
    with pytest.raises(ExtractRejected, match="columns may be swapped, or rows repeated") as caught:
        checked(path)
    assert not [i for i in ids if i in str(caught.value)]


def test_values_shaped_like_the_files_pupil_ids_are_rejected(write_extract):
    rows = pupils_with_ids(RAW_IDS[:12])
    for row, value in zip(rows, ["Q2223330001", "Q2223330002", "Q2223330003"] * 4):
        row[COLUMN["intervention"]] = value  # three repeating values: not 'a different value on every row'
    with pytest.raises(ExtractRejected) as caught:
        checked(write_extract("111601.csv", rows))
    assert "columns may be swapped: 12 of the 12 'intervention' values look like this file's pupil_ids" in str(
        caught.value
    )
    assert "Q222" not in str(caught.value)


@pytest.mark.parametrize(
    "rows",
    [
        pupils_with_ids(RAW_IDS[:30], interventions=("Reading", "Maths mastery", "Talk for writing")),
        pupils_with_ids(RAW_IDS[:3]),
        pupils_with_ids(RAW_IDS[:6], interventions=("Reading", "Maths mastery", "Talk for writing")),
        pupils_with_ids([str(i) for i in range(1, 21)]),  # pupil_ids that are small numbers, like year groups
    ],
    ids=["3 interventions", "3 pupils", "3 interventions in 6 rows", "ids 1-20"],
)
def test_genuine_files_are_not_taken_for_swapped_ones(write_extract, rows):
    for row, code in zip(rows, ["X", "U", "Other"]):
        row[COLUMN["gender"]] = code  # a few odd codes are warnings, not a swap
    result = checked(write_extract("111601.csv", rows))
    assert result.good.num_rows == len(rows) and result.quarantine.num_rows == 0


def test_a_file_of_repeated_rows_is_rejected_not_half_loaded(write_extract):
    rows = pupil_rows(10)
    with pytest.raises(ExtractRejected, match="20 rows share their pupil_id with another row of the same trial"):
        checked(write_extract("111601.csv", rows + rows))


# ---- implausible scores (issue 15, point 6, at load) -------------------------------------------


def typo_file(write_extract, column, value, n=30, name="111601.csv"):
    rows = pupil_rows(n)
    rows[5][COLUMN[column]] = value
    return write_extract(name, rows), rows


def loaded(tmp_path, path):
    """Load one file into a fresh warehouse: (report, pupils frame by line, load_warnings rows)."""
    from microtrials.ingest import warehouse
    from microtrials.ingest.loading import load_file

    con = warehouse.connect(tmp_path / f"{path.stem}.duckdb")
    report = load_file(con, path, b"k" * 32)
    pupils = con.execute("SELECT * EXCLUDE (source_file, delivery_id) FROM pupils "
                         "ORDER BY source_line").df()
    warnings = con.execute("SELECT line, column_name, rule FROM load_warnings ORDER BY line").fetchall()
    quarantine = con.execute("SELECT line, column_name, rule, reason FROM quarantine ORDER BY line").fetchall()
    con.close()
    return report, pupils, warnings, quarantine


def test_validating_a_file_no_longer_judges_its_scores_against_the_file_itself(write_extract):
    """Plausibility is judged at trial level after the whole batch is read (microtrials.ingest.plausibility)."""
    result = checked(typo_file(write_extract, "outcome", "99999999")[0])
    assert result.quarantine.num_rows == 0 and result.good["outcome"][5].as_py() == 99999999.0


def test_an_outcome_typo_is_set_aside_at_load_and_the_rest_loads_unchanged(write_extract, tmp_path):
    path, rows = typo_file(write_extract, "outcome", "99999999")
    report, got, _, quarantine = loaded(tmp_path, path)
    assert [q[:3] for q in quarantine] == [(7, "outcome", "implausible value")]
    assert "99999999" not in quarantine[0][3] and "far outside this trial's outcome scores" in quarantine[0][3]
    # Finding 19: the value is set aside, not the pupil. The analysis sees exactly the file with that
    # outcome blank (no post-test): the pupil still counts as randomised.
    rows[5][COLUMN["outcome"]] = ""
    _, blanked, _, _ = loaded(tmp_path, write_extract("blanked.csv", rows))
    assert len(got) == 30 and report.rows_quarantined == 0
    pd.testing.assert_frame_equal(got, blanked)


def test_a_baseline_typo_is_blanked_with_a_warning_and_the_pupil_kept(write_extract, tmp_path):
    path, _ = typo_file(write_extract, "baseline", "75000")
    report, got, warnings, quarantine = loaded(tmp_path, path)
    assert quarantine == [] and len(got) == 30
    assert pd.isna(got["baseline"][5]) and got["outcome"][5] == 86.0
    assert warnings == [(7, "baseline", "implausible value")]


def test_each_trial_is_judged_on_its_own_scores(write_extract, tmp_path):
    reading = pupil_rows(12)  # outcomes 81-92
    maths = pupil_rows(12, intervention="Maths", measure="PUMA")
    for i, row in enumerate(maths):
        row[COLUMN["outcome"]] = str(1000 + i)  # another scale: fine within its own trial
    report, got, warnings, quarantine = loaded(tmp_path, write_extract("111601.csv", reading + maths))
    assert quarantine == [] and len(got) == 24 and warnings == []


def test_an_identifier_in_the_round_column_is_blanked_with_a_warning_and_the_pupil_kept(write_extract):
    header = EXTRACT_HEADER + ("round",)
    rows = [row + ["2025 Autumn"] for row in pupil_rows(20)]
    other_pupil = rows[3][1]
    rows[5][-1] = other_pupil  # another pupil's id typed into round
    rows[6][-1] = "x" * 150
    result = checked(write_extract("111601.csv", rows, header=header))
    assert result.quarantine.num_rows == 0 and result.good.num_rows == 20
    rounds = result.good["round"].to_pylist()
    assert rounds[5] in (None, "") and rounds[6] in (None, "") and rounds[0] == "2025 Autumn"
    warnings = result.warnings.to_pandas()
    assert warnings[warnings["rule"] == "round looks like an identifier"]["line"].tolist() == [7, 8]
    assert other_pupil not in " ".join(warnings["reason"]) and "xxxxx" not in " ".join(warnings["reason"])
