"""Workbooks: a name that starts like a formula is a quote-prefixed string cell, shown as sent
(no visible leading '), and never stored as a formula."""

from __future__ import annotations

import io
import zipfile

import pandas as pd
from openpyxl import load_workbook

from microtrials.publish.workbooks import table_xlsx, template_xlsx

NAMES = ["=HYPERLINK(\"http://x\",\"y\")", "+1+2", "-cmd", "@SUM(A1)", "Reciprocal reading"]


def _sheet_xml(data: bytes, sheet: int = 1) -> str:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return z.read(f"xl/worksheets/sheet{sheet}.xml").decode()


def test_formula_like_names_are_string_cells_without_a_visible_quote():
    data = table_xlsx(pd.DataFrame({"Intervention": NAMES, "Effect size": [0.1, 0.2, None, 0.4, 0.5]}), "Evidence")
    xml = _sheet_xml(data)
    assert "<f>" not in xml and "<f " not in xml  # nothing Excel would calculate
    assert "'=" not in xml and "'+" not in xml and "'@" not in xml
    sheet = load_workbook(io.BytesIO(data))["Evidence"]
    cells = [row[0] for row in sheet.iter_rows(min_row=2)]
    assert [c.value for c in cells] == NAMES  # shown exactly as sent
    assert all(c.data_type == "s" for c in cells)
    assert [c.quotePrefix for c in cells] == [True, True, True, True, False]  # Excel keeps them text if edited
    assert sheet["B2"].value == 0.1 and sheet["B2"].data_type == "n"  # numbers stay numbers


def test_template_lists_keep_a_formula_like_trial_name_as_text():
    data = template_xlsx(["intervention", "outcome_measure", "arm"], "=1+2", "@score", {"arm": ["intervention"]},
                         [("arm", "help")])
    book = load_workbook(io.BytesIO(data))
    values = [c.value for row in book["Lists"].iter_rows() for c in row]
    assert "=1+2" in values and "@score" in values
    for sheet_xml in (_sheet_xml(data, 1), _sheet_xml(data, 2)):
        assert "<f>1+2" not in sheet_xml and "'=1+2" not in sheet_xml
