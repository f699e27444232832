"""Extracts as schools send them (issue 14, point 5): an Excel workbook and a Windows-1252 CSV give
the same rows as the UTF-8 CSV."""

from __future__ import annotations

import io

import openpyxl
import pandas as pd
import pytest

from microtrials.ingest import warehouse
from microtrials.ingest.extracts import ExtractRejected, read_extract, validate
from microtrials.ingest.loading import load_folder
from tests.conftest import EXTRACT_HEADER, extract_csv, pupil_rows

KEY = b"test-key"
COLUMN = {name: i for i, name in enumerate(EXTRACT_HEADER)}


def rows_with_accents():
    rows = pupil_rows(6, intervention="Café lecture", measure="Évaluation")
    rows[1][COLUMN["outcome"]] = "85.5"
    rows[2][COLUMN["outcome"]] = ""  # no post-test
    rows[3][COLUMN["fsm"]] = "Yes"
    rows[4][COLUMN["year_group"]] = "Year 7"
    return rows


def as_number(text: str):
    """A cell as Excel would store what a person typed: numbers as floats (111601.0, 7.0), text as text."""
    try:
        return float(text)
    except ValueError:
        return text if text else None


def workbook_bytes(header, rows, typed=True, sheets=1) -> bytes:
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(list(header))
    for row in rows:
        sheet.append([as_number(v) if typed else v for v in row])
    for n in range(1, sheets):  # more pupils on other sheets (the load reads the first only)
        other = book.create_sheet(f"Year {n + 6}")
        other.append(list(header))
        other.append(rows[0])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def good_rows(path):
    result = validate(read_extract(path))
    return result, result.good.to_pandas()


def test_xlsx_and_windows_1252_give_the_same_rows_as_utf8(write_extract):
    rows = rows_with_accents()
    text = extract_csv(rows)
    utf8, utf8_rows = good_rows(write_extract("111601.csv", text))
    cp1252, cp1252_rows = good_rows(write_extract("111601_ansi.csv", text.encode("cp1252")))
    xlsx, xlsx_rows = good_rows(write_extract("111601.xlsx", workbook_bytes(EXTRACT_HEADER, rows)))
    assert utf8_rows["intervention"].iloc[0] == "Café lecture"
    assert utf8_rows["outcome_measure"].iloc[0] == "Évaluation"
    assert utf8_rows["school_urn"].iloc[0] == "111601" and utf8_rows["year_group"].tolist() == [1, 2, 3, 4, 7, 6]
    pd.testing.assert_frame_equal(cp1252_rows, utf8_rows)
    pd.testing.assert_frame_equal(xlsx_rows, utf8_rows)
    assert utf8.file_warnings() == [] and xlsx.file_warnings() == []
    assert cp1252.file_warnings() == [
        "the file is not UTF-8 (first on line 2); it was read as Windows-1252 ('ANSI'), so check that accented "
        "letters (such as é) came out right; next time save it in Excel with File > Save As > "
        "'CSV UTF-8 (Comma delimited) (*.csv)'"
    ]
    assert cp1252.rows_with_warnings == 0  # a file-level warning, not a row's


def test_excel_floats_come_out_as_typed(write_extract):
    rows = pupil_rows(2)
    content = workbook_bytes(EXTRACT_HEADER, rows)
    sheet = openpyxl.load_workbook(io.BytesIO(content)).active
    assert sheet["A2"].value == 111601.0 and isinstance(sheet["J2"].value, (int, float))  # stored as numbers
    _, got = good_rows(write_extract("111601.xlsx", content))
    assert got["school_urn"].tolist() == ["111601", "111601"] and got["year_group"].tolist() == [1, 2]
    assert got["outcome"].tolist() == [81.0, 82.0]


def test_a_leading_zero_urn_typed_as_text_stays_and_one_stored_as_a_number_is_flagged(write_extract):
    rows = pupil_rows(2, urn="012345")
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(list(EXTRACT_HEADER))
    sheet.append(rows[0])  # all text: '012345'
    sheet.append([12345] + rows[1][1:])  # the URN as a number: Excel dropped the zero
    out = io.BytesIO()
    book.save(out)
    result, got = good_rows(write_extract("012345.xlsx", out.getvalue()))
    assert got["school_urn"].tolist() == ["012345"]
    assert result.quarantine["reason"].to_pylist() == [
        "school_urn must be 6 digits, got 5 digits (a spreadsheet may have dropped leading zeros: format the "
        "column as text and re-enter the URN)"
    ]
    assert result.quarantine["line"].to_pylist() == [3]  # the sheet's row number


def test_workbook_rows_keep_sheet_row_numbers_and_blank_rows_are_skipped(write_extract):
    rows = pupil_rows(3)
    rows[2][COLUMN["arm"]] = "treat"
    content = workbook_bytes(EXTRACT_HEADER, [rows[0], [""] * len(EXTRACT_HEADER), rows[1], rows[2]])
    result, got = good_rows(write_extract("111601.xlsx", content))
    assert got["line"].tolist() == [2, 4] and result.quarantine["line"].to_pylist() == [5]
    assert result.rows_read == 3


def test_pupils_on_other_sheets_are_not_read_and_the_report_says_so(write_extract):
    result, got = good_rows(write_extract("111601.xlsx", workbook_bytes(EXTRACT_HEADER, pupil_rows(2), sheets=3)))
    assert len(got) == 2
    assert result.file_warnings() == [
        "2 other sheets of the workbook have a pupil_id column; only the first sheet was read, so put every "
        "pupil on the first sheet and send the file again"
    ]


def test_the_sites_own_xlsx_template_filled_in_loads_without_warnings(write_extract):
    from microtrials.publish import dictionary
    from microtrials.publish.site import FORMAT_CHOICES, FORMAT_HELP
    from microtrials.publish.workbooks import template_xlsx

    columns = list(dictionary.TEMPLATE_COLUMNS)
    book = openpyxl.load_workbook(io.BytesIO(template_xlsx(columns, "Café lecture", "Évaluation", FORMAT_CHOICES,
                                                           FORMAT_HELP)))
    assert len(book.worksheets) == 3  # pupils, the hidden lists, "How to fill"
    rows = rows_with_accents()
    for row in rows:
        values = dict(zip(EXTRACT_HEADER, row))
        book.active.append([as_number(values[c]) if c in values else None for c in columns])
    out = io.BytesIO()
    book.save(out)
    result, got = good_rows(write_extract("111601.xlsx", out.getvalue()))
    _, expected = good_rows(write_extract("111601.csv", extract_csv(rows)))
    assert result.file_warnings() == [] and result.warnings.num_rows == 0 and result.quarantine.num_rows == 0
    pd.testing.assert_frame_equal(got, expected)


def test_columns_outside_the_contract_in_a_workbook_are_dropped(write_extract):
    header = EXTRACT_HEADER + ("Pupil name",)
    rows = [r + ["Alice Smith"] for r in pupil_rows(2)]
    rows[0] = rows[0] + ["", "a note in an unnamed column"]
    extract = read_extract(write_extract("111601.xlsx", workbook_bytes(header, rows, typed=False)))
    assert extract.columns_dropped == ["Pupil name", "(unnamed column 13)", "(unnamed column 14)"]
    assert "Alice" not in extract.rows.to_pandas().to_csv() and "a note" not in extract.rows.to_pandas().to_csv()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"PK\x03\x04 not a workbook",
         "111601.xlsx: could not be read as an Excel workbook (.xlsx): it may be damaged, password-protected or "
         "another kind of zip file; open it in Excel and save it again, or use File > Save As > "
         "'CSV UTF-8 (Comma delimited) (*.csv)' and send the file again"),
        ("empty", "111601.xlsx: the workbook's first sheet is empty; put the extract on the first sheet"),
    ],
    ids=["not a workbook", "empty sheet"],
)
def test_unreadable_workbooks_are_rejected_with_a_reason(write_extract, content, reason):
    if content == "empty":
        out = io.BytesIO()
        openpyxl.Workbook().save(out)
        content = out.getvalue()
    with pytest.raises(ExtractRejected) as caught:
        read_extract(write_extract("111601.xlsx", content))
    assert str(caught.value) == reason


def test_a_folder_loads_xlsx_and_still_rejects_other_spreadsheets(tmp_path, write_extract):
    write_extract("111601.xlsx", workbook_bytes(EXTRACT_HEADER, pupil_rows(3)))
    write_extract("111602.csv", extract_csv(pupil_rows(2, urn="111602", intervention="Café")).encode("cp1252"))
    write_extract("111603.xls", b"\xd0\xcf\x11\xe0")
    folder = write_extract("111604.ods", b"PK\x03\x04").parent
    con = warehouse.connect(tmp_path / "w.duckdb")
    reports = load_folder(con, folder, KEY)
    assert [(r.file_name, r.status, r.rows_loaded) for r in reports] == [
        ("111601.xlsx", "loaded", 3), ("111602.csv", "loaded", 2), ("111603.xls", "rejected", 0),
        ("111604.ods", "rejected", 0),
    ]
    assert reports[2].reason.startswith("111603.xls: only .csv and .xlsx files are loaded")
    assert reports[1].file_warnings[0].startswith("the file is not UTF-8")
    stored = con.execute("SELECT source_file, line, rule FROM load_warnings").fetchall()
    assert stored == [("111602.csv", None, "read as Windows-1252")]
    assert con.execute("SELECT DISTINCT intervention FROM pupils ORDER BY 1").fetchall() == [("Café",), ("Reading",)]
    con.close()


def test_the_load_asset_can_list_a_files_warnings(tmp_path, write_extract):
    rows = pupil_rows(3, intervention="Café")
    rows[1][COLUMN["gender"]] = "X"
    write_extract("111601.csv", extract_csv(rows).encode("cp1252"))
    con = warehouse.connect(tmp_path / "w.duckdb")
    load_folder(con, (tmp_path / "extracts"), KEY)
    listed = con.execute(warehouse.sql("warnings_for_files"), {"files": ["111601.csv"]}).fetchall()
    con.close()
    assert [(file, line, column) for file, line, column, _ in listed] == [
        ("111601.csv", None, None), ("111601.csv", 3, "gender"),
    ]


def test_a_file_mixing_utf8_and_windows_1252_is_rejected(write_extract):
    text = extract_csv(pupil_rows(2, intervention="Café")).encode("utf-8")
    mixed = text.replace(b",NGRT,", b",NGRT \xa3,", 1)  # a Windows-1252 pound sign beside UTF-8 "é"
    with pytest.raises(ExtractRejected, match="mixes UTF-8 text with text in another encoding"):
        read_extract(write_extract("111601.csv", mixed))


def test_a_workbook_that_unpacks_too_large_is_refused_before_parsing(write_extract, monkeypatch):
    from microtrials.ingest import extract_workbook as workbook

    monkeypatch.setattr(workbook, "MAX_UNPACKED_BYTES", 1000)
    monkeypatch.setattr("openpyxl.load_workbook", lambda *a, **k: pytest.fail("parsed"))
    with pytest.raises(ExtractRejected, match="the workbook unpacks to 0 MB, far more than an extract needs"):
        read_extract(write_extract("111601.xlsx", workbook_bytes(EXTRACT_HEADER, pupil_rows(2))))
