"""The extract contract: what is read, what each broken rule says, which files are rejected whole."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest

from microtrials.errors import MicrotrialsError
from microtrials.ingest.extracts import ExtractRejected, read_extract, validate
from tests.conftest import EXTRACT_HEADER, extract_csv, pupil_rows


def check(path):
    """The validated file, its tables as pandas frames for easy comparison."""
    checked = validate(read_extract(path))
    return SimpleNamespace(
        school_urn=checked.school_urn,
        trials=checked.trials,
        rows_read=checked.rows_read,
        rows_quarantined=checked.rows_quarantined,
        rows_with_warnings=checked.rows_with_warnings,
        columns_dropped=checked.columns_dropped,
        quarantined_by_reason=checked.quarantined_by_reason,
        warned_by_reason=checked.warned_by_reason,
        file_warnings=checked.file_warnings(),
        good=checked.good.to_pandas(),
        quarantine=checked.quarantine.to_pandas(),
        warnings=checked.warnings.to_pandas(),
    )


def test_good_file_reads_every_row_typed(write_extract):
    checked = check(write_extract("111601.csv", pupil_rows(4)))
    assert checked.school_urn == "111601"
    assert checked.trials == [("Reading", "NGRT")]
    assert checked.rows_read == 4 and len(checked.good) == 4 and checked.quarantine.empty
    row = checked.good.iloc[0]
    assert (row["arm"], row["outcome"], row["baseline"], row["fsm"], row["gender"], row["year_group"], row["send"]) == (
        "control", 81.0, 76.0, False, "M", 1, False,
    )
    assert checked.good["line"].tolist() == [2, 3, 4, 5]


def test_header_case_spaces_bom_and_values_trimmed(write_extract):
    header = [" School_URN ", "PUPIL_ID", "Intervention ", " outcome_measure", "ARM", "Outcome"]
    text = "\ufeff" + extract_csv([[" 111601 ", " P1 ", " Reading ", "NGRT ", " InterVention ", " 12.5 "]], header)
    checked = check(write_extract("a.csv", text))
    row = checked.good.iloc[0]
    assert (row["school_urn"], row["pupil_id"], row["intervention"], row["outcome_measure"], row["arm"]) == (
        "111601", "P1", "Reading", "NGRT", "intervention",
    )
    assert row["outcome"] == 12.5
    assert checked.columns_dropped == []
    assert math.isnan(row["baseline"])
    assert pd.isna(row["fsm"]) and pd.isna(row["gender"]) and pd.isna(row["year_group"])


def test_blank_outcome_is_attrition_not_an_error(write_extract):
    rows = pupil_rows(2)
    rows[0][5] = ""
    rows[1][6] = ""
    checked = check(write_extract("a.csv", rows))
    assert checked.quarantine.empty
    assert math.isnan(checked.good["outcome"].iloc[0]) and math.isnan(checked.good["baseline"].iloc[1])


COLUMN = {name: i for i, name in enumerate(EXTRACT_HEADER)}

BAD_VALUES = [  # only a bad school_urn, pupil_id, arm, intervention or outcome_measure keeps a row out
    ("arm", "treat", "arm must be 'intervention' or 'control', got 'treat'; correct the pupil's randomised arm"),
    ("arm", "", "arm is empty; arm must be 'intervention' or 'control', got nothing; correct the pupil's randomised arm"),
    ("arm", "Intervention group 12345", "arm must be 'intervention' or 'control', got a value not shown here (it could "
     "identify a pupil); correct the pupil's randomised arm"),
    ("school_urn", "11601", "school_urn must be 6 digits, got 5 digits (a spreadsheet may have dropped leading zeros: "
     "format the column as text and re-enter the URN)"),
    ("school_urn", "1116011", "school_urn must be 6 digits, got 7 digits; correct it to the school's 6-digit URN"),
    ("school_urn", "URN111601", "school_urn must be 6 digits, got other characters; correct it to the school's "
     "6-digit URN"),
    ("school_urn", "", "school_urn is empty; fill in the school's 6-digit URN"),
    ("pupil_id", "", "pupil_id is empty; give every pupil the school's own pupil reference"),
    ("intervention", "", "intervention is empty; name the intervention the pupil was in"),
    ("outcome_measure", "", "outcome_measure is empty; name the assessment used as the outcome"),
]


@pytest.mark.parametrize(("column", "value", "reason"), BAD_VALUES)
def test_each_broken_rule_quarantines_the_row_with_its_reason(write_extract, column, value, reason):
    rows = pupil_rows(3)
    rows[1][COLUMN[column]] = value
    checked = check(write_extract("111601.csv", rows))
    assert checked.quarantine[["line", "column_name", "reason"]].values.tolist() == [[3, column, reason]]
    assert checked.good["line"].tolist() == [2, 4]
    assert checked.rows_read == 3 and checked.rows_quarantined == 1


@pytest.mark.parametrize("value", ["control", "CONTROL", " Control ", "intervention", "INTERVENTION"])
def test_arm_any_case(write_extract, value):
    rows = pupil_rows(1)
    rows[0][COLUMN["arm"]] = value
    assert check(write_extract("a.csv", rows)).good["arm"].tolist() == [value.strip().lower()]


@pytest.mark.parametrize(("value", "expected"), [("0", 0), ("13", 13), ("", None)])
def test_year_group_bounds(write_extract, value, expected):
    rows = pupil_rows(1)
    rows[0][COLUMN["year_group"]] = value
    got = check(write_extract("a.csv", rows)).good["year_group"].iloc[0]
    assert (got == expected) if expected is not None else pd.isna(got)


def test_both_rows_of_a_duplicate_pair_are_quarantined(write_extract):
    rows = pupil_rows(4)
    rows[3] = list(rows[1])
    rows[3][COLUMN["outcome"]] = "99"
    checked = check(write_extract("a.csv", rows))
    assert checked.quarantine[["line", "column_name", "reason"]].values.tolist() == [
        [3, "pupil_id", "the same school, pupil, intervention and outcome_measure are also on line 5; "
         "keep one row per pupil per intervention and outcome_measure"],
        [5, "pupil_id", "the same school, pupil, intervention and outcome_measure are also on line 3; "
         "keep one row per pupil per intervention and outcome_measure"],
    ]
    assert checked.good["line"].tolist() == [2, 4]
    assert checked.quarantined_by_reason() == {"duplicate pupil row": 2}


def test_same_pupil_in_another_trial_is_not_a_duplicate(write_extract):
    rows = pupil_rows(2) + pupil_rows(2, measure="Other test")
    assert len(check(write_extract("a.csv", rows)).good) == 4


def test_a_reason_never_quotes_a_pupil_id(write_extract):
    rows = pupil_rows(3)
    rows[0][COLUMN["arm"]] = rows[2][COLUMN["pupil_id"]]  # columns shifted: a pupil_id in arm
    rows[1][COLUMN["gender"]] = rows[1][COLUMN["pupil_id"]]
    checked = check(write_extract("a.csv", rows))
    assert checked.quarantine["reason"].tolist() == [
        "arm must be 'intervention' or 'control', got a pupil_id value (are the columns in the wrong order?); "
        "correct the pupil's randomised arm",
    ]
    assert checked.warnings["reason"].tolist() == [
        "gender should be 'F' or 'M' (also Female/Male, Girl/Boy) or blank, got a pupil_id value (are the columns "
        "in the wrong order?); it was left blank for this pupil, whose results still count",
    ]


@pytest.mark.parametrize("column", ["outcome", "baseline", "fsm", "gender", "year_group", "send", "arm"])
def test_a_value_that_could_be_an_identifier_is_never_quoted(write_extract, column):
    rows = pupil_rows(3)
    rows[1][COLUMN[column]] = "K7731902"  # no pupil_id of this file, but shaped like an identifier
    rows[2][COLUMN[column]] = "a value far too long to be a code"
    checked = check(write_extract("a.csv", rows))
    reasons = checked.quarantine["reason"].tolist() + checked.warnings["reason"].tolist()
    assert len(reasons) == 2
    assert all("not shown here (it could identify a pupil)" in r for r in reasons)
    assert not any("K7731902" in r or "far too long" in r for r in reasons)


def test_a_row_breaking_two_rules_has_two_entries_and_counts_once(write_extract):
    rows = pupil_rows(2)
    rows[0][COLUMN["arm"]] = "x"
    rows[0][COLUMN["outcome_measure"]] = ""
    rows[0][COLUMN["fsm"]] = "x"  # a warning, not reported for a row kept out
    checked = check(write_extract("a.csv", rows))
    assert checked.quarantine["column_name"].tolist() == ["arm", "outcome_measure"]
    assert checked.rows_quarantined == 1
    assert checked.warnings.empty and checked.rows_with_warnings == 0


def test_a_value_running_over_two_lines_is_set_aside_line_by_line(write_extract):
    rows = pupil_rows(3)
    rows[0][COLUMN["intervention"]] = "Reading\nwith a newline"  # no contract value spans lines
    rows[2][COLUMN["arm"]] = "bad"
    checked = check(write_extract("a.csv", rows))
    # Lines: 1 header, 2-3 the quoted value's two lines, 4 a good row, 5 the bad arm.
    assert checked.quarantine[["line", "rule"]].values.tolist() == [
        [2, "unmatched quote"], [3, "unmatched quote"], [5, "arm not 'intervention' or 'control'"],
    ]
    assert checked.quarantine["reason"].iloc[0] == (
        'this line has a quote (") that is not closed on the same line, so lines 2 to 3 ran together as one value; '
        "each line was read on its own instead. Remove the stray quote (no value may run over two lines) and send "
        "the file again"
    )
    assert checked.good["line"].tolist() == [4]
    assert checked.rows_read == 4  # every non-blank line after the header


def test_blank_lines_are_skipped_but_still_counted_as_lines(write_extract):
    text = extract_csv(pupil_rows(3))
    head, *rest = text.splitlines(keepends=True)
    rest[2] = rest[2].replace("intervention", "bad", 1) if "intervention" in rest[2] else rest[2].replace("control", "bad", 1)
    text = head + rest[0] + "\n" + ",,,,,,,,,,\n" + rest[1] + rest[2] + "\n\n"
    checked = check(write_extract("a.csv", text))
    assert checked.rows_read == 3
    assert checked.good["line"].tolist() == [2, 5]
    assert checked.quarantine["line"].tolist() == [6]


def test_a_row_with_the_wrong_number_of_values_is_quarantined(write_extract):
    text = extract_csv(pupil_rows(3))
    lines = text.splitlines(keepends=True)
    lines[2] = lines[2].replace(",Reading,", ",Reading,extra,", 1)
    lines[3] = lines[3].rsplit(",", 2)[0] + "\n"
    checked = check(write_extract("a.csv", "".join(lines) + "\n"))
    assert checked.good["line"].tolist() == [2]
    assert checked.quarantine[["line", "reason"]].values.tolist() == [
        [3, "the row has 12 values but the header has 11 columns; check for a missing or extra comma "
         "(a value containing a comma must be in double quotes)"],
        [4, "the row has 9 values but the header has 11 columns; check for a missing or extra comma "
         "(a value containing a comma must be in double quotes)"],
    ]
    assert checked.rows_read == 3


def test_columns_outside_the_contract_are_dropped_and_named(write_extract):
    header = EXTRACT_HEADER + ("Pupil name", "DOB", "")
    rows = [r + ["Alice Smith", "2015-01-01", "x"] for r in pupil_rows(2)]
    extract = read_extract(write_extract("a.csv", rows, header=header))
    assert extract.columns_dropped == ["Pupil name", "DOB", "(unnamed column 14)"]
    assert "Alice Smith" not in extract.rows.to_pandas().to_csv()
    assert set(extract.rows.column_names) == set(EXTRACT_HEADER) | {"line"}


def test_optional_columns_may_be_absent(write_extract):
    header = EXTRACT_HEADER[:6]
    checked = check(write_extract("a.csv", [r[:6] for r in pupil_rows(2)], header=header))
    assert len(checked.good) == 2 and checked.good["fsm"].isna().all()


GOOD = extract_csv(pupil_rows(2))
SAVE = "in Excel use File > Save As > 'CSV UTF-8 (Comma delimited) (*.csv)' and send the file again"

REJECTIONS = [
    ("empty", b"", f"x.csv: the file is empty; {SAVE}"),
    ("whitespace", b"\n \n", f"x.csv: the file is empty; {SAVE}"),
    ("header only", extract_csv([]).encode(),
     "x.csv: the file has a header row but no pupil rows; send the file with one row per pupil per intervention"),
    ("header and blank lines", (extract_csv([]) + "\n,,,,\n").encode(),
     "x.csv: the file has a header row but no pupil rows; send the file with one row per pupil per intervention"),
    ("neither utf-8 nor windows-1252", GOOD.replace("Reading", "Lecture\x81").encode("latin-1"),
     "x.csv: the file is neither UTF-8 nor Windows-1252 text (line 2 has a byte that is not a character in either); "
     f"{SAVE}"),
    ("utf-16", GOOD.encode("utf-16"), f"x.csv: the file is UTF-16 text (Excel's 'Unicode Text'), not UTF-8; {SAVE}"),
    ("utf-16 big-endian", b"\xfe\xff" + GOOD.encode("utf-16-be"),
     f"x.csv: the file is UTF-16 text (Excel's 'Unicode Text'), not UTF-8; {SAVE}"),
    ("utf-32", GOOD.encode("utf-32"), f"x.csv: the file is UTF-32 text, not UTF-8; {SAVE}"),
    ("utf-32 big-endian", b"\x00\x00\xfe\xff" + GOOD.encode("utf-32-be"), f"x.csv: the file is UTF-32 text, not UTF-8; {SAVE}"),
    ("zip", b"PK\x03\x04rest-of-zip",
     "x.csv: could not be read as an Excel workbook (.xlsx): it may be damaged, password-protected or another kind "
     f"of zip file; open it in Excel and save it again, or {SAVE.removeprefix('in Excel ')}"),
    ("xls", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
     f"x.csv: this is an old Excel workbook (.xls) or a password-protected one, not a CSV; {SAVE}"),
    ("binary", b"school_urn,pupil_id\x00\x01\x02", f"x.csv: the file is binary (it contains NUL bytes), not CSV text; {SAVE}"),
    ("semicolons", GOOD.replace(",", ";").encode(),
     f"x.csv: the file is separated by semicolons, not commas; {SAVE} "
     "(on a computer set to a European language, check the list separator is a comma)"),
    ("tabs", GOOD.replace(",", "\t").encode(), f"x.csv: the file is separated by tabs, not commas; {SAVE}"),
    ("missing arm", extract_csv([r[:4] + r[5:] for r in pupil_rows(2)], EXTRACT_HEADER[:4] + EXTRACT_HEADER[5:]).encode(),
     "x.csv: required column 'arm' is missing from the header row; add it (required: school_urn, pupil_id, "
     "intervention, outcome_measure, arm, outcome) and send the file again"),
    ("no header", "\n".join(",".join(r) for r in pupil_rows(2)).encode(),
     "x.csv: required columns 'school_urn', 'pupil_id', 'intervention', 'outcome_measure', 'arm', 'outcome' are "
     "missing from the header row; add them (required: school_urn, pupil_id, intervention, outcome_measure, arm, "
     "outcome) and send the file again"),
    ("blank first line", ("\n" + GOOD).encode(),
     "x.csv: the first line is blank; the first line must be the header row (school_urn, pupil_id, ...)"),
    ("two arm columns", extract_csv([r + ["control"] for r in pupil_rows(1)], EXTRACT_HEADER + ("ARM",)).encode(),
     "x.csv: the header has two 'arm' columns (columns 5 and 12); keep one and send the file again"),
    ("two schools", extract_csv(pupil_rows(2) + pupil_rows(2, urn="111602")).encode(),
     "x.csv: the file holds rows for 2 schools (URNs 111601, 111602); the contract is one file per school per "
     "delivery: split it into one file per school"),
    ("quote in the header", ('school_urn,"pupil_id,intervention\n' + GOOD).encode(),
     'x.csv: the header row has a quote (") that is not closed on the same line; remove it and send the file again'),
]


@pytest.mark.parametrize(("case", "content", "reason"), REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_unreadable_files_are_rejected_whole_with_a_reason(write_extract, case, content, reason):
    with pytest.raises(ExtractRejected) as caught:
        check(write_extract("x.csv", content))
    assert str(caught.value) == reason
    assert isinstance(caught.value, MicrotrialsError)


@pytest.mark.parametrize("ending", ["\r\n", "\r"])
def test_windows_and_old_mac_line_endings(write_extract, ending):
    rows = pupil_rows(3)
    rows[1][COLUMN["arm"]] = "x"
    checked = check(write_extract("a.csv", extract_csv(rows).replace("\n", ending)))
    assert checked.good["line"].tolist() == [2, 4] and checked.quarantine["line"].tolist() == [3]
    assert checked.good["send"].tolist() == [False, False]


def test_a_multi_line_quoted_value_with_a_ragged_row_keeps_physical_line_numbers(write_extract):
    rows = pupil_rows(4)
    rows[0][COLUMN["outcome_measure"]] = "NGRT\nform A"
    text = extract_csv(rows).replace("\n" + ",".join(rows[2]) + "\n", "\n" + ",".join(rows[2][:5]) + "\n")
    checked = check(write_extract("a.csv", text))
    # Lines: 2-3 the value over two lines, 4 a good row, 5 ragged, 6 a good row.
    assert checked.good["line"].tolist() == [4, 6]
    assert checked.quarantine[["line", "rule"]].values.tolist() == [
        [2, "unmatched quote"], [3, "unmatched quote"], [5, "wrong number of values"],
    ]
    assert checked.rows_read == 5


# ---- odd optional values: read when understood, else blanked with a warning; never cost the pupil ----

SPELLINGS = [
    ("fsm", ["Y", "yes", "TRUE", "t", "1", "N", "No", "false", "F", "0", " y ", "N/A", "-", "unknown"],
     [True, True, True, True, True, False, False, False, False, False, True, None, None, None]),
    ("send", ["Yes", "no", "K", "e", "EHCP", "SEN support", "None", "N", "1", "0"],
     [True, False, True, True, True, True, False, False, True, False]),
    ("gender", ["F", "m", "Female", "MALE", "Girl", "boy", "g", "B", "unknown", ""],
     ["F", "M", "F", "M", "F", "M", "F", "M", None, None]),
    ("year_group", ["7", "07", "7.0", "Year 7", "year7", "Y7", "Yr 7", "R", "Reception", "YR", "Year R", "FS2", "13",
                    "0", "Year  10", ""],
     [7, 7, 7, 7, 7, 7, 7, 0, 0, 0, 0, 0, 13, 0, 10, None]),
]


@pytest.mark.parametrize(("column", "values", "expected"), SPELLINGS, ids=[s[0] for s in SPELLINGS])
def test_the_spellings_schools_systems_produce_are_understood(write_extract, column, values, expected):
    rows = pupil_rows(len(values))
    for row, value in zip(rows, values):
        row[COLUMN[column]] = value
    checked = check(write_extract("a.csv", rows))
    assert checked.quarantine.empty and checked.warnings.empty
    got = [None if pd.isna(v) else v for v in checked.good[column].tolist()]
    assert got == expected


WARNED_VALUES = [  # (column, value, reason): the row loads, the value is blank, the warning says why
    ("outcome", "A", "outcome is not a number, got 'A'; kept as no post-test for this pupil (they still count as "
     "randomised). If the pupil has a score, write it with digits and a decimal point only"), ("outcome", "X", None), ("outcome", "-", None), ("outcome", "n/a", None),
    ("outcome", "inf", None), ("outcome", "NaN", None), ("outcome", "12,5", None),
    ("outcome", "1e999", "outcome is too large to be a score, got '1e999'; kept as no post-test for this pupil (they "
     "still count as randomised). Correct the score"),
    ("baseline", "n/a", "baseline is not a number, got 'n/a'; left blank for this pupil. If the pupil has a score, "
     "write it with digits and a decimal point only"),
    ("fsm", "maybe", "fsm should be 'Y' or 'N' (also Yes/No, True/False, 1/0) or blank, got 'maybe'; it was left "
     "blank for this pupil, whose results still count"),
    ("send", "2", "send should be 'Y' or 'N' (also Yes/No, 1/0, or the census codes K and E) or blank, got '2'; it "
     "was left blank for this pupil, whose results still count"),
    ("gender", "X", "gender should be 'F' or 'M' (also Female/Male, Girl/Boy) or blank, got 'X'; it was left blank "
     "for this pupil, whose results still count"),
    ("year_group", "14", "year_group should be a year from 0 (Reception) to 13 (also 'Year 7', 'Y7', 'R') or blank, "
     "got '14'; it was left blank for this pupil, whose results still count"),
    ("year_group", "-1", None), ("year_group", "5.5", None), ("year_group", "Nursery", None),
]


@pytest.mark.parametrize(("column", "value", "reason"), WARNED_VALUES)
def test_an_odd_value_is_blanked_with_a_warning_and_the_pupil_loads(write_extract, column, value, reason):
    rows = pupil_rows(3)
    rows[1][COLUMN[column]] = value
    checked = check(write_extract("111601.csv", rows))
    assert checked.quarantine.empty
    assert checked.good["line"].tolist() == [2, 3, 4]  # the pupil is still randomised and counted
    assert pd.isna(checked.good[column].iloc[1])
    assert checked.good["arm"].iloc[1] == "intervention"
    if column != "outcome":  # the pupil's outcome is still there to be analysed
        assert checked.good["outcome"].iloc[1] == 82
    warning = checked.warnings.iloc[0]
    assert len(checked.warnings) == 1 and checked.rows_with_warnings == 1
    assert (warning["line"], warning["column_name"], warning["school_urn"]) == (3, column, "111601")
    assert (warning["intervention"], warning["outcome_measure"]) == ("Reading", "NGRT")
    if reason is not None:
        assert warning["reason"] == reason
    else:
        assert f"got '{value}'" in warning["reason"]
    if column in ("outcome", "baseline"):
        assert checked.warned_by_reason() == {f"{column} not a number": 1}


def test_round_is_read_as_text_and_blank_is_null(write_extract):
    header = EXTRACT_HEADER + ("Round",)
    rows = [r + [value] for r, value in zip(pupil_rows(3), ["2025-26", " autumn 2025 ", ""])]
    checked = check(write_extract("a.csv", rows, header=header))
    assert [None if pd.isna(v) else v for v in checked.good["round"]] == ["2025-26", "autumn 2025", None]
    assert checked.columns_dropped == []


def test_the_same_pupil_in_two_rounds_is_not_a_duplicate(write_extract):
    header = EXTRACT_HEADER + ("round",)
    rows = [r + ["2024-25"] for r in pupil_rows(2)] + [r + ["2025-26"] for r in pupil_rows(2)]
    checked = check(write_extract("a.csv", rows, header=header))
    assert checked.quarantine.empty and len(checked.good) == 4
