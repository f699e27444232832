"""A school's Excel workbook (.xlsx) read as the text a CSV of its first sheet would hold.

Cells become the text a person typed: whole numbers Excel stores as floats lose the ``.0``
(URN ``111601.0`` -> ``111601``, year ``7.0`` -> ``7``), text stays as it is (a URN typed as text
keeps its leading zero), dates become ISO text, blanks become ``""``. The rows then go through
the same validation as a CSV's. Read with openpyxl in read-only mode (values Excel last
calculated, not formulas), by the sheet's real extent, within a cap on rows and columns.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import zipfile

from microtrials.errors import MicrotrialsError

# Floats up to this size are written without a decimal point when they are whole numbers.
_WHOLE_LIMIT = 1e15
# A workbook that unpacks to more than this is refused before it is parsed (a "zip bomb" guard;
# an extract of 10,000 pupils unpacks to a few MB).
MAX_UNPACKED_BYTES = 200 * 1024 * 1024
# A value beyond these on the first sheet rejects the workbook (docs/loading.md): an extract is one
# row per pupil per intervention (a large secondary school sends a few thousand) and a few columns.
MAX_SHEET_ROWS = 100_000
MAX_SHEET_COLUMNS = 256  # also the widest header a CSV extract may have (extracts._header)
# A formula element in a sheet's XML (<f>, <f t="shared" .../>, with or without a namespace prefix).
_FORMULA_TAG = re.compile(rb"<(?:\w+:)?f[\s>/]")


class WorkbookUnreadable(MicrotrialsError):
    """The bytes are not an Excel workbook openpyxl can read (damaged, another kind of zip, encrypted)."""


class WorkbookTooLarge(MicrotrialsError):
    """The workbook unpacks to more than ``MAX_UNPACKED_BYTES``."""


class SheetTooLarge(MicrotrialsError):
    """The first sheet has a value beyond :data:`MAX_SHEET_ROWS` rows or :data:`MAX_SHEET_COLUMNS` columns."""

    def __init__(self, cell: str, what: str) -> None:
        super().__init__(cell)
        self.cell, self.what = cell, what


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


def read_first_sheet(data: bytes) -> tuple[list[list[str]], list[int], int, list[str]]:
    """The first sheet's rows as text cells (header first), each row's sheet row number, how many
    *other* visible sheets have a ``pupil_id`` header (pupils the load would not see; a template's
    hidden lists and help sheets do not count), and the cells holding a formula with no value
    Excel saved (``["D2", ...]``: written by a program that does not calculate).

    The sheet is read by its real extent, never the ``<dimension>`` it declares (which a program
    may understate or overstate). A value beyond :data:`MAX_SHEET_ROWS` rows or
    :data:`MAX_SHEET_COLUMNS` columns raises :class:`SheetTooLarge` naming the cell, before the
    rest is read. Trailing empty cells are cut; blank rows are left out (each row keeps its
    sheet row number, as Excel shows it), except row 1, which must be the header.
    """
    formulas = _check_size(data)
    book = _open(data, data_only=True)
    try:
        if not book.worksheets:
            return [], [], 0, []
        sheet = book.worksheets[0]
        other_pupil_sheets = sum(1 for other in book.worksheets[1:] if _has_pupil_header(other))
        rows, numbers = _sheet_rows(sheet)
    finally:
        book.close()
    uncalculated = _uncalculated(data, rows, numbers) if formulas else []
    return rows, numbers, other_pupil_sheets, uncalculated


def _check_size(data: bytes) -> bool:
    """Refuse a zip bomb (:class:`WorkbookTooLarge`) or a damaged zip; whether any sheet holds a formula."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise WorkbookUnreadable(str(exc)) from exc
    unpacked = sum(member.file_size for member in members)
    if unpacked > MAX_UNPACKED_BYTES:
        raise WorkbookTooLarge(f"{unpacked // (1024 * 1024)} MB")
    try:
        first = _first_sheet_part(archive)
        if first is not None:
            _refuse_far_values(archive.read(first))
        return any(_FORMULA_TAG.search(archive.read(m)) for m in members if m.filename.startswith("xl/worksheets/"))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, KeyError) as exc:
        raise WorkbookUnreadable(str(exc)) from exc


def _first_sheet_part(archive: zipfile.ZipFile) -> str | None:
    """The zip member holding the workbook's first sheet (``xl/worksheets/sheet1.xml`` as a rule),
    from ``xl/workbook.xml`` and its relationships; None when they are not where Excel puts them."""
    names = set(archive.namelist())
    if "xl/workbook.xml" not in names or "xl/_rels/workbook.xml.rels" not in names:
        return None
    sheet = re.search(rb"<(?:\w+:)?sheet\b[^>]*?\s(?:\w+:)?id=\"([^\"]+)\"", archive.read("xl/workbook.xml"))
    if sheet is None:
        return None
    rels = archive.read("xl/_rels/workbook.xml.rels")
    for rel in re.finditer(rb"<(?:\w+:)?Relationship\b[^>]*>", rels):
        rel_id = re.search(rb"\sId=\"([^\"]+)\"", rel.group(0))
        target = re.search(rb"\sTarget=\"([^\"]+)\"", rel.group(0))
        if rel_id and target and rel_id.group(1) == sheet.group(1):
            path = target.group(1).decode("utf-8", "replace")
            path = path.lstrip("/") if path.startswith("/") else f"xl/{path}"
            return path if path in names else None
    return None


# A cell reference in a far column (beyond IV = 256: IW-IZ, JA-ZZ, or three letters) or row (6+ digits).
_FAR_CELL = re.compile(rb"<(?:\w+:)?c\b[^>]*?\sr=\"((?:I[W-Z]|[J-Z][A-Z]|[A-Z]{3})[0-9]+|[A-Z]{1,3}[0-9]{6,})\"[^>]*?(/?)>")
_HAS_VALUE = re.compile(rb"(?:(?!</(?:\w+:)?c>).){0,2000}?<(?:\w+:)?(?:v|is|f)\b", re.DOTALL)


def _refuse_far_values(sheet_xml: bytes) -> None:
    """:class:`SheetTooLarge` for the first cell beyond the caps that holds a value, found in the
    sheet's XML before it is parsed (a regular-expression scan: about a second for 200 MB), so a
    far value is refused at once instead of after reading every row before it."""
    for match in _FAR_CELL.finditer(sheet_xml):
        if match.group(2) == b"/" or not _HAS_VALUE.match(sheet_xml, match.end()):
            continue  # a formatted empty cell
        ref = match.group(1).decode("ascii")
        letters = ref.rstrip("0123456789")
        if int(ref[len(letters):]) > MAX_SHEET_ROWS or _column_number(letters) > MAX_SHEET_COLUMNS:
            raise SheetTooLarge(ref, "cells")


def _column_number(letters: str) -> int:
    number = 0
    for letter in letters:
        number = number * 26 + ord(letter) - 64
    return number


def _open(data: bytes, data_only: bool):
    import openpyxl  # imported here: only workbooks need it

    try:
        book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=data_only)
    except Exception as exc:  # a parser of untrusted bytes: any failure means "not a workbook we can read"
        raise WorkbookUnreadable(str(exc)) from exc
    for sheet in book.worksheets:
        if hasattr(sheet, "reset_dimensions"):
            sheet.reset_dimensions()  # read the cells that are there, not the extent the file declares
    return book


def _sheet_rows(sheet) -> tuple[list[list[str]], list[int]]:
    """The rows of ``sheet`` holding a value, as text cells, with their row numbers (row 1 always,
    blank or not: it must be the header), within the caps (else SheetTooLarge). Empty rows cost
    one test each: a sheet whose one value is in row 1,048,576 is walked in about a second."""
    rows: list[list[str]] = []
    numbers: list[int] = []
    try:
        for number, values in enumerate(sheet.iter_rows(values_only=True), start=1):
            if not values and number > 1:
                continue
            cells = [cell_text(v) for v in values[:MAX_SHEET_COLUMNS]]
            while cells and not cells[-1].strip():
                cells.pop()
            far = next((i for i in range(len(values) - 1, MAX_SHEET_COLUMNS - 1, -1)
                        if cell_text(values[i]).strip()), None)
            if far is not None:
                raise SheetTooLarge(f"{_column(far + 1)}{number}", "columns")
            if cells and number > MAX_SHEET_ROWS:
                raise SheetTooLarge(f"{_column(len(cells))}{number}", "rows")
            if cells or number == 1:
                rows.append(cells)
                numbers.append(number)
    except SheetTooLarge:
        raise
    except Exception as exc:  # a damaged sheet part: not a workbook we can read
        raise WorkbookUnreadable(str(exc)) from exc
    while rows and not rows[-1]:
        rows.pop()
        numbers.pop()
    return rows, numbers


def _uncalculated(data: bytes, rows: list[list[str]], numbers: list[int]) -> list[str]:
    """Cells of the first sheet that hold a formula and read blank: no value was saved with it."""
    if not numbers:
        return []
    book = _open(data, data_only=False)
    found: list[str] = []
    try:
        by_number = dict(zip(numbers, rows))
        sheet = book.worksheets[0]
        for number, cells in enumerate(sheet.iter_rows(max_row=numbers[-1]), start=1):
            values = by_number.get(number, [])
            for column, cell in enumerate(cells[:MAX_SHEET_COLUMNS]):
                if getattr(cell, "data_type", None) == "f" and not (column < len(values) and values[column].strip()):
                    found.append(f"{_column(column + 1)}{number}")
    finally:
        book.close()
    return found


def _column(number: int) -> str:
    """A 1-based column number as Excel's letters (1 -> A, 16384 -> XFD)."""
    letters = ""
    while number:
        number, rest = divmod(number - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def _has_pupil_header(sheet) -> bool:
    """A visible sheet whose first row names a ``pupil_id`` column (any case, spaces or hyphens)."""
    if getattr(sheet, "sheet_state", "visible") != "visible":
        return False
    for values in sheet.iter_rows(min_row=1, max_row=1, values_only=True):
        return any(
            isinstance(v, str) and "_".join(v.strip().lower().replace("-", " ").split()) == "pupil_id" for v in values
        )
    return False
