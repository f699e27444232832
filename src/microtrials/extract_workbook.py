"""A school's Excel workbook (.xlsx) read as the text a CSV of its first sheet would hold.

Cells become the text a person typed: whole numbers Excel stores as floats lose the ``.0``
(URN ``111601.0`` -> ``111601``, year ``7.0`` -> ``7``), text stays as it is (a URN typed as text
keeps its leading zero), dates become ISO text, blanks become ``""``. The rows then go through
the same validation as a CSV's. Read with openpyxl in read-only mode (values Excel last
calculated, not formulas).
"""

from __future__ import annotations

import datetime as dt
import io
import zipfile

from microtrials.errors import MicrotrialsError

# Floats up to this size are written without a decimal point when they are whole numbers.
_WHOLE_LIMIT = 1e15
# A workbook that unpacks to more than this is refused before it is parsed (a "zip bomb" guard;
# an extract of 10,000 pupils unpacks to a few MB).
MAX_UNPACKED_BYTES = 200 * 1024 * 1024


class WorkbookUnreadable(MicrotrialsError):
    """The bytes are not an Excel workbook openpyxl can read (damaged, another kind of zip, encrypted)."""


class WorkbookTooLarge(MicrotrialsError):
    """The workbook unpacks to more than ``MAX_UNPACKED_BYTES``."""


def cell_text(value) -> str:
    """One cell's value as the text a CSV export would hold."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < _WHOLE_LIMIT:
            return str(int(value))
        return repr(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    return str(value)


def read_first_sheet(data: bytes) -> tuple[list[list[str]], list[int], int]:
    """The first sheet's rows as text cells (header first), each row's sheet row number, and how
    many *other* visible sheets have a ``pupil_id`` header (pupils the load would not see; a
    template's hidden lists and help sheets do not count). Trailing empty cells are cut; fully
    blank rows are kept (as ``[]``) so row numbers stay as Excel shows them."""
    import openpyxl  # imported here: only workbooks need it

    try:
        unpacked = sum(member.file_size for member in zipfile.ZipFile(io.BytesIO(data)).infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise WorkbookUnreadable(str(exc)) from exc
    if unpacked > MAX_UNPACKED_BYTES:
        raise WorkbookTooLarge(f"{unpacked // (1024 * 1024)} MB")
    try:
        book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as exc:  # a parser of untrusted bytes: any failure means "not a workbook we can read"
        raise WorkbookUnreadable(str(exc)) from exc
    try:
        if not book.worksheets:
            return [], [], 0
        sheet = book.worksheets[0]
        other_pupil_sheets = sum(1 for other in book.worksheets[1:] if _has_pupil_header(other))
        rows: list[list[str]] = []
        numbers: list[int] = []
        for number, values in enumerate(sheet.iter_rows(values_only=True), start=sheet.min_row or 1):
            cells = [cell_text(v) for v in values]
            while cells and not cells[-1].strip():
                cells.pop()
            rows.append(cells)
            numbers.append(number)
        return rows, numbers, other_pupil_sheets
    finally:
        book.close()


def _has_pupil_header(sheet) -> bool:
    """A visible sheet whose first row names a ``pupil_id`` column (any case, spaces or hyphens)."""
    if getattr(sheet, "sheet_state", "visible") != "visible":
        return False
    for values in sheet.iter_rows(min_row=1, max_row=1, values_only=True):
        return any(
            isinstance(v, str) and "_".join(v.strip().lower().replace("-", " ").split()) == "pupil_id" for v in values
        )
    return False
