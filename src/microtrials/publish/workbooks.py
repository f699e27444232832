"""Excel workbooks the site publishes: the readable evidence table and per-trial extract templates (openpyxl).

Workbooks are written deterministically (fixed creation time) so a rebuild from the same data
gives the same bytes. Text that starts like a formula (``=``, ``+``, ``-``, ``@``, tab, CR) is
written as a string cell (``t="inlineStr"``, never ``<f>``) with Excel's quote-prefix style: Excel
cannot run a string cell as a formula, shows the name as sent (no visible leading ``'``), and
keeps it text if someone edits the cell. (A CSV has no cell types, so the CSVs add the ``'``.)
"""

from __future__ import annotations

import datetime as dt
import io
import re
import zipfile

import pandas as pd
from openpyxl import Workbook
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.datavalidation import DataValidation

from microtrials.publish.publish import reads_as_formula

_FIXED_TIME = dt.datetime(2000, 1, 1)
_HEADER_FILL = PatternFill("solid", fgColor="F3F2F1")
#: Rows of a template that carry the drop-down lists (a school's trial rarely exceeds this).
TEMPLATE_ROWS = 2000


def _save(book: Workbook) -> bytes:
    book.properties.created = _FIXED_TIME
    book.properties.modified = _FIXED_TIME
    book.properties.creator = "microtrials"
    buffer = io.BytesIO()
    book.save(buffer)
    return _fixed_zip_times(buffer.getvalue())


def _fixed_zip_times(data: bytes) -> bytes:
    """The same zip with every entry dated 1980-01-01, so equal workbooks are equal bytes."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.compress_type = zipfile.ZIP_DEFLATED
            fixed.external_attr = info.external_attr
            content = source.read(info.filename)
            if info.filename == "docProps/core.xml":  # openpyxl stamps the save time here
                content = re.sub(rb"(<dcterms:modified[^>]*>)[^<]*(<)", rb"\g<1>2000-01-01T00:00:00Z\g<2>", content)
            target.writestr(fixed, content)
    return out.getvalue()


def _missing(value: object) -> bool:
    try:
        return value is None or bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _put(cell, value: object) -> None:
    """Write ``value`` into ``cell``; text that starts like a formula becomes a quote-prefixed
    string cell (openpyxl would otherwise type ``=...`` as a formula)."""
    cell.value = value
    if isinstance(value, str) and reads_as_formula(value):
        cell.data_type = "s"
        cell.quotePrefix = True


def _header(sheet, headers: list[str], widths: list[float]) -> None:
    for index, width in enumerate(widths, start=1):
        cell = sheet.cell(row=1, column=index)
        if index <= len(headers):
            _put(cell, headers[index - 1])
        cell.font = Font(bold=True)
        cell.fill = _HEADER_FILL
        cell.alignment = Alignment(wrap_text=True, vertical="top")
        sheet.column_dimensions[get_column_letter(index)].width = width
    sheet.freeze_panes = "A2"


def table_xlsx(frame: pd.DataFrame, sheet_title: str, notes: list[tuple[str, str]] | None = None,
               number_formats: dict[str, str] | None = None) -> bytes:
    """One sheet holding ``frame`` (already formatted for people) with a bold, frozen header row and
    a filter on it.

    Column widths follow the longest value (10 to 60 characters); long text wraps. Numbers stay
    numbers; ``number_formats`` maps a header to Excel's display format (e.g. p-values
    ``[<0.0001]"<0.0001";0.0000``). ``notes`` (heading, text) rows go on a second sheet "About".
    """
    book = Workbook()
    sheet = book.active
    sheet.title = sheet_title[:31]
    headers = [str(c) for c in frame.columns]
    widths = []
    for column in frame.columns:
        longest = max([len(str(column))] + [len(str(v)) for v in frame[column] if not _missing(v)])
        widths.append(float(min(max(longest + 2, 10), 60)))
    _header(sheet, headers, widths)
    for r, row in enumerate(frame.itertuples(index=False, name=None), start=2):
        for c, v in enumerate(row, start=1):
            if not _missing(v):
                _put(sheet.cell(row=r, column=c), v.item() if hasattr(v, "item") else v)
    formats = {headers.index(h) + 1: f for h, f in (number_formats or {}).items() if h in headers}
    for row in sheet.iter_rows(min_row=2):
        for cell in row:
            if isinstance(cell.value, str) and len(cell.value) > 60:
                cell.alignment = Alignment(wrap_text=True, vertical="top")
            if cell.column in formats and isinstance(cell.value, (int, float)):
                cell.number_format = formats[cell.column]
    if headers:
        sheet.auto_filter.ref = f"A1:{get_column_letter(len(headers))}{max(len(frame) + 1, 2)}"
    if notes:
        about = book.create_sheet("About")
        _header(about, ["", ""], [28, 100])
        about.delete_rows(1)
        for heading, text in notes:
            about.append([heading, text])
            about.cell(row=about.max_row, column=1).font = Font(bold=True)
            about.cell(row=about.max_row, column=2).alignment = Alignment(wrap_text=True, vertical="top")
    return _save(book)


def template_xlsx(columns: list[str], intervention: str, outcome_measure: str,
                  choices: dict[str, list[str]], help_rows: list[tuple[str, str]]) -> bytes:
    """An empty extract for one trial: the format's headers, drop-down lists, a "How to fill" sheet.

    ``choices`` maps a column to its allowed values (e.g. arm: intervention, control); each gets a
    list validation on rows 2..TEMPLATE_ROWS that refuses anything else. ``intervention`` and
    ``outcome_measure`` get a one-value list with the trial's exact spelling.
    """
    book = Workbook()
    sheet = book.active
    sheet.title = "Pupils"
    widths = [max(len(c) + 4, 14) for c in columns]
    for name, value in (("intervention", intervention), ("outcome_measure", outcome_measure)):
        if name in columns:
            widths[columns.index(name)] = min(max(len(value) + 4, 16), 50)
    _header(sheet, list(columns), widths)
    lists = book.create_sheet("Lists")
    all_choices = dict(choices)
    all_choices.update({"intervention": [intervention], "outcome_measure": [outcome_measure]})
    for offset, (column, values) in enumerate(all_choices.items(), start=1):
        if column not in columns:
            continue
        lists.cell(row=1, column=offset, value=column)
        for r, value in enumerate(values, start=2):
            _put(lists.cell(row=r, column=offset), value)
        letter = get_column_letter(offset)
        source = f"Lists!${letter}$2:${letter}${len(values) + 1}"
        validation = DataValidation(type="list", formula1=source, allow_blank=True, showErrorMessage=True,
                                    errorTitle=f"{column}: not allowed",
                                    error=f"Choose {column} from the list: " + ", ".join(values)[:200])
        target = get_column_letter(columns.index(column) + 1)
        validation.add(f"{target}2:{target}{TEMPLATE_ROWS}")
        sheet.add_data_validation(validation)
    lists.sheet_state = "hidden"
    help_sheet = book.create_sheet("How to fill")
    _header(help_sheet, ["Column", "What to put"], [20, 100])
    for column, text in help_rows:
        help_sheet.append([column, text])
        help_sheet.cell(row=help_sheet.max_row, column=2).alignment = Alignment(wrap_text=True, vertical="top")
    return _save(book)
