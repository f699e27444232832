"""The school extract contract: read a delivered file, validate every row, say why rows are set aside.

The contract is ``docs/extract-format.md``; the rules are listed in ``docs/loading.md``. A file
that cannot be read as the contract says is rejected whole (:class:`ExtractRejected`). A row that
breaks a rule for a required column is quarantined with its line number (the file's physical line,
as a text editor or spreadsheet shows it: header = line 1) and a plain-English reason; an optional
value that is not understood is blanked with a *warning* and the row loads. Validation is
vectorised over the file's rows (pyarrow compute). No reason ever quotes a value that could be a
pupil identifier.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import itertools
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from microtrials.ingest import names
from microtrials.ingest import extract_checks as checks
from microtrials.ingest import extract_workbook as workbook
from microtrials.ingest import spellings
from microtrials.errors import MicrotrialsError

REQUIRED_COLUMNS = ("school_urn", "pupil_id", "intervention", "outcome_measure", "arm", "outcome")
OPTIONAL_COLUMNS = ("baseline", "fsm", "gender", "year_group", "send", "round")
CONTRACT_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS

ARMS = ("intervention", "control")
YEAR_GROUPS = range(0, 14)  # National Curriculum years; Reception is 0
WORKBOOK_SUFFIXES = (".xlsx",)  # read with openpyxl, first sheet
SAVE_AS_CSV = "in Excel use File > Save As > 'CSV UTF-8 (Comma delimited) (*.csv)' and send the file again"

# A plain decimal number: 85, -3.5, .5, 1e3. Nothing else (no '1,5', no thousands separators).
_NUMBER = r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
_URN = r"^[0-9]{6}$"
_ABSENT = r"^\s*(?:abs|absent)\.?\s*$"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# A well-formed multi-byte UTF-8 character: in a file that is not UTF-8, a sign of mixed encodings.
_UTF8_SEQUENCE = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}")

# A value may be quoted in a reason only if it is in one of these coded/numeric columns, at most
# this long, holds no run of 4 digits and equals no pupil_id in the file: never an identifier.
_QUOTABLE = ("arm", "fsm", "gender", "send", "year_group", "outcome", "baseline")
_SHOWN_VALUE_CHARS = 12
_NUMERIC = ("outcome", "baseline", "year_group")
# Words that name no one: a value made only of them ("Intervention group", "Not known") is shown.
_SAFE_WORDS = (
    "intervention", "control", "group", "treatment", "comparison", "arm", "class", "wait", "waiting", "list",
    "yes", "no", "not", "known", "unknown", "free", "school", "meals", "sen", "send", "ehc", "ehcp", "plan",
    "support", "statement", "male", "female", "boy", "girl", "year", "reception", "absent", "missing",
    "none", "other", "n/a", "na", "test", "score", "the", "a", "of", "in",
)
_SAFE_PHRASE = r"^\s*(?:" + "|".join(map(re.escape, _SAFE_WORDS)) + r")(?:[\s_/-]+(?:" + "|".join(
    map(re.escape, _SAFE_WORDS)) + r"))*\s*$"
_NOT_SHOWN = "a value not shown here (it could identify a pupil)"
_PUPIL_ID_SHOWN = "a pupil_id value (are the columns in the wrong order?)"


# Two words of letters ("Jane Smith"): a name, never quoted even when short.
_TWO_WORDS = r"\pL{2,}[\s.,]+\pL{2,}"


def quotable(column: str, values: pa.Array, pupil_ids: pa.Array) -> pa.Array:
    """Which of a column's values a reason or a feedback file may show (the identifier rule).

    Only values of a coded or numeric column (``_QUOTABLE``) that equal no pupil_id of the file and
    are (a) at most 12 characters with no run of 4 digits and not two words of letters (a name);
    (b) made only of the words of ``_SAFE_WORDS`` (``Intervention group``), at most 40 characters;
    or (c) in a score or year column, a plain number of at most 8 characters (``9898``).
    """
    values = pc.cast(values, pa.string())
    if column not in _QUOTABLE:
        return pa.repeat(pa.scalar(False), len(values))
    text = pc.replace_substring_regex(values, r"[\r\n\t]+", " ")
    length = pc.utf8_length(text)
    short = pc.and_(
        pc.less_equal(length, _SHOWN_VALUE_CHARS),
        pc.invert(pc.or_(pc.match_substring_regex(text, r"[0-9]{4}"), pc.match_substring_regex(text, _TWO_WORDS))),
    )
    words = pc.and_(pc.less_equal(length, 40), pc.match_substring_regex(text, _SAFE_PHRASE, ignore_case=True))
    safe = pc.or_(short, words)
    if column in _NUMERIC:
        safe = pc.or_(safe, pc.and_(pc.less_equal(length, 8), pc.match_substring_regex(text, _NUMBER)))
    return pc.fill_null(pc.and_(safe, pc.invert(pc.is_in(values, value_set=pupil_ids))), False)


class ExtractRejected(MicrotrialsError):
    """A whole file that cannot be read as the extract contract says; nothing from it is loaded."""


ENTRY_SCHEMA = pa.schema(
    [
        ("line", pa.int64()),
        ("school_urn", pa.string()),
        ("intervention", pa.string()),
        ("outcome_measure", pa.string()),
        ("round", pa.string()),  # the round the row sent (blank: none, or a cell left blank as an identifier)
        ("column_name", pa.string()),
        ("rule", pa.string()),
        ("reason", pa.string()),
    ]
)
# A quarantined row (kept out) and a warning (the row loads, the value named is blank) look alike.
QUARANTINE_SCHEMA = ENTRY_SCHEMA
WARNING_SCHEMA = ENTRY_SCHEMA
_NO_ENTRIES = ENTRY_SCHEMA.empty_table()  # Arrow tables are immutable: one empty table serves all

GOOD_SCHEMA = pa.schema(
    [
        ("school_urn", pa.string()),
        ("pupil_id", pa.string()),
        ("intervention", pa.string()),
        ("outcome_measure", pa.string()),
        ("arm", pa.string()),
        ("outcome", pa.float64()),
        ("baseline", pa.float64()),
        ("fsm", pa.bool_()),
        ("gender", pa.string()),
        ("year_group", pa.int32()),
        ("send", pa.bool_()),
        ("round", pa.string()),
        ("line", pa.int64()),
    ]
)


def _entries(lines, rules, reasons, columns=None) -> pa.Table:
    """Quarantine/warning entries for whole lines (no trial known yet)."""
    count = len(lines)
    return pa.table(
        {
            "line": pa.array(lines, type=pa.int64()),
            "school_urn": pa.nulls(count, pa.string()),
            "intervention": pa.nulls(count, pa.string()),
            "outcome_measure": pa.nulls(count, pa.string()),
            "round": pa.nulls(count, pa.string()),
            "column_name": pa.array(columns if columns is not None else [None] * count, type=pa.string()),
            "rule": pa.array(rules, type=pa.string()),
            "reason": pa.array(reasons, type=pa.string()),
        },
        schema=ENTRY_SCHEMA,
    )


@dataclass
class Extract:
    """A delivered file read into text columns (trimmed), before any rule is checked.

    ``rows`` holds one string column per contract column present and ``line``: the file's line
    for the row (a workbook's row number). Blank rows are left out. ``format_errors`` holds the
    lines that could not be read as a row of the header's columns (never loaded); ``warnings``
    holds file-level warnings (e.g. read as Windows-1252), with no line.
    """

    file_name: str
    delivery_id: str
    rows: pa.Table
    columns_dropped: list[str]
    format_errors: pa.Table = field(default_factory=ENTRY_SCHEMA.empty_table)
    warnings: pa.Table = field(default_factory=ENTRY_SCHEMA.empty_table)


@dataclass
class ValidatedExtract:
    """The rows that keep every rule (typed, ``GOOD_SCHEMA``), one quarantine entry per broken
    rule per row kept out (``QUARANTINE_SCHEMA``), and one warning per value blanked in a loaded
    row or per file-level concern (``WARNING_SCHEMA``; file-level ones have no line)."""

    file_name: str
    delivery_id: str
    school_urn: str | None
    trials: list[tuple[str, str]]
    rows_read: int
    good: pa.Table
    quarantine: pa.Table
    columns_dropped: list[str]
    warnings: pa.Table = field(default_factory=WARNING_SCHEMA.empty_table)

    @property
    def rows_quarantined(self) -> int:
        """Rows kept out (a loaded row whose implausible outcome was set aside is not one)."""
        lines = self.quarantine.column("line").drop_null()
        if len(lines) and self.good.num_rows:
            lines = lines.filter(pc.invert(pc.is_in(lines, value_set=self.good.column("line"))))
        return pc.count_distinct(lines).as_py() if len(lines) else 0

    @property
    def rows_with_warnings(self) -> int:
        """Loaded rows with at least one warning."""
        return _distinct_lines(self.warnings)

    def quarantined_by_reason(self) -> dict[str, int]:
        """Rows per broken rule (a row breaking two rules counts under both)."""
        return _rows_by_rule(self.quarantine)

    def warned_by_reason(self) -> dict[str, int]:
        """Loaded rows per warning rule (file-level warnings are in :meth:`file_warnings`)."""
        return _rows_by_rule(self.warnings)

    def file_warnings(self) -> list[str]:
        """Warnings about the whole file (no line), as plain sentences."""
        if not self.warnings.num_rows:
            return []
        return self.warnings.filter(pc.is_null(self.warnings.column("line"))).column("reason").to_pylist()


def first_lines(entries: pa.Table, limit: int) -> tuple[pa.Table, int, int | None]:
    """The quarantine or warning entries of the first ``limit`` lines they name (and those with no
    line), how many lines after those were left out, and the last line kept (None when none was)."""
    lines = entries.column("line")
    if entries.num_rows <= limit:  # fewer entries than the limit: fewer lines too
        return entries, 0, None
    distinct = pc.unique(lines.drop_null())
    if len(distinct) <= limit:
        return entries, 0, None
    last = distinct.take(pc.array_sort_indices(distinct))[limit - 1].as_py()
    keep = pc.or_kleene(pc.is_null(lines), pc.less_equal(lines, last))
    return entries.filter(keep), len(distinct) - limit, last


def file_entry(rule: str, reason: str, school: str | None) -> pa.Table:
    """One warning about the whole file (no line), for ``school``."""
    entry = _entries([None], [rule], [reason])
    return entry.set_column(1, "school_urn", pa.array([school], pa.string()))


def distinct_lines(entries: pa.Table) -> int:
    """Distinct lines among quarantine or warning entries (file-level ones, with no line, left out)."""
    return _distinct_lines(entries)


def rows_by_rule(entries: pa.Table) -> dict[str, int]:
    """Distinct lines per rule among quarantine or warning entries."""
    return _rows_by_rule(entries)


def _distinct_lines(entries: pa.Table) -> int:
    lines = entries.column("line").drop_null()
    return pc.count_distinct(lines).as_py() if len(lines) else 0


def _rows_by_rule(entries: pa.Table) -> dict[str, int]:
    if not entries.num_rows:
        return {}
    pairs = {
        (rule, line)
        for rule, line in zip(entries.column("rule").to_pylist(), entries.column("line").to_pylist())
        if line is not None
    }
    return dict(sorted(Counter(rule for rule, _ in pairs).items()))


# ---------------------------------------------------------------------------------------------
# Reading

#: Environment variable and default (MB) of the largest file read as an extract (docs/loading.md).
MAX_FILE_MB_VAR = "MICROTRIALS_MAX_FILE_MB"
DEFAULT_MAX_FILE_MB = 50


def max_file_bytes() -> int:
    """The largest extract file that is read: ``$MICROTRIALS_MAX_FILE_MB`` megabytes (default 50;
    a school's extract of 2,000 pupils is about 150 KB). A larger file is rejected unread."""
    try:
        megabytes = float(os.environ.get(MAX_FILE_MB_VAR, DEFAULT_MAX_FILE_MB))
    except ValueError:
        megabytes = DEFAULT_MAX_FILE_MB
    return int(max(megabytes, 0) * 2**20)


class FileTooLarge(ExtractRejected):
    """A file over :func:`max_file_bytes`, rejected before its bytes are read (``delivery_id`` stands
    in for its content hash: size and modification time)."""

    def __init__(self, name: str, stat: os.stat_result) -> None:
        limit = max_file_bytes()
        super().__init__(
            f"{name}: the file is {_megabytes(stat.st_size)}, over the {_megabytes(limit)} an extract may be "
            "(one row per pupil: a school's extract is well under 1 MB), so it was not read; check it is the "
            f"right file and send the extract alone ({MAX_FILE_MB_VAR} sets the limit)"
        )
        self.delivery_id = oversize_id(stat)


def _megabytes(size: int) -> str:
    megabytes = size / 2**20
    return f"{megabytes:,.0f} MB" if megabytes >= 10 else f"{megabytes:.2g} MB"


def oversize_id(stat: os.stat_result) -> str:
    """The delivery id of a file too large to read: its size and modification time, not its hash."""
    return f"too-large:{stat.st_size}:{stat.st_mtime_ns}"


def read_file(path: Path) -> bytes:
    """A delivered file's bytes; :class:`FileTooLarge` (before reading) over :func:`max_file_bytes`.
    Never reads more than the limit and one byte, whatever the file system says its size is."""
    limit = max_file_bytes()
    with open(path, "rb") as handle:
        stat = os.fstat(handle.fileno())
        if stat.st_size > limit:
            raise FileTooLarge(Path(path).name, stat)
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise FileTooLarge(Path(path).name, os.stat(path))
    return data


def file_id(path: Path) -> str:
    """The file's delivery id without holding it in memory: sha256 of its bytes (streamed), or
    :func:`oversize_id` for a file over the limit (it is never read); OSError when unreadable."""
    with open(path, "rb") as handle:
        stat = os.fstat(handle.fileno())
        if stat.st_size > max_file_bytes():
            return oversize_id(stat)
        return hashlib.file_digest(handle, "sha256").hexdigest()


def normalise_header(name: str) -> str:
    """A header cell as the contract names it: trimmed, lower case, spaces/hyphens as underscores."""
    return re.sub(r"[\s\-]+", "_", name.strip().lstrip("\ufeff").strip()).lower()


def read_extract(path: Path, data: bytes | None = None) -> Extract:
    """Read one delivered file (or its bytes, already read) into trimmed text columns, or raise
    :class:`ExtractRejected`. A ``.xlsx`` workbook (or a file with a workbook's bytes) is read
    from its first sheet; anything else as CSV text."""
    path = Path(path)
    name = path.name
    if data is None:
        try:
            data = read_file(path)
        except OSError as exc:
            raise ExtractRejected(
                f"{name}: could not be opened ({exc.strerror}); check the file is readable"
            ) from exc
    delivery_id = hashlib.sha256(data).hexdigest()
    if path.suffix.lower() in WORKBOOK_SUFFIXES or data.startswith(b"PK\x03\x04"):
        header, records, format_errors, warnings = _read_workbook(name, data)
    else:
        text, warnings = _decode(name, data)
        if not text.strip():
            raise ExtractRejected(f"{name}: the file is empty; {SAVE_AS_CSV}")
        header = _header(name, text)
        records, format_errors = _parse_records(name, text, len(header))
        warnings = _concat_entries(warnings, _cut_off(text, records))
    positions, dropped = _match_columns(name, header)
    # Keep only contract columns: anything else may hold personal data and never goes further.
    kept = {column: records.column(index) for column, index in positions.items()}
    rows = pa.table({**{c: pc.utf8_trim_whitespace(a) for c, a in kept.items()}, "line": records.column("line")})
    if rows.num_rows == 0 and format_errors.num_rows == 0:
        raise ExtractRejected(
            f"{name}: the file has a header row but no pupil rows; "
            "send the file with one row per pupil per intervention"
        )
    return Extract(name, delivery_id, rows, dropped, format_errors, warnings)


def decode_text(name: str, data: bytes, save_as: str = SAVE_AS_CSV) -> tuple[str, int | None]:
    """The file's text and, when it was read as Windows-1252, the line of its first non-UTF-8 byte
    (else None); or :class:`ExtractRejected` saying what the file looks like instead.

    UTF-8 (with or without a BOM) is the contract. Text that is not UTF-8 but decodes as
    Windows-1252 (what Excel's plain "CSV (Comma delimited)" writes on Windows) is read as such;
    UTF-16 and UTF-32, old workbooks, PDFs, binary files, mixed encodings and bytes that are neither are
    rejected, each message ending with ``save_as`` (what to do). The extract and the registry
    (``trials.csv``) are read by this one function, so both say the same words.
    """
    if not data:
        raise ExtractRejected(f"{name}: the file is empty; {save_as}")
    if data.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):  # before UTF-16: FF FE starts both
        raise ExtractRejected(f"{name}: the file is UTF-32 text, not UTF-8; {save_as}")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ExtractRejected(f"{name}: the file is UTF-16 text (Excel's 'Unicode Text'), not UTF-8; {save_as}")
    if data.startswith(b"\xd0\xcf\x11\xe0"):
        raise ExtractRejected(
            f"{name}: this is an old Excel workbook (.xls) or a password-protected one, not a CSV; {save_as}"
        )
    if data.startswith(b"PK\x03\x04"):
        raise ExtractRejected(f"{name}: this is an Excel workbook (.xlsx) or another zip file, not a CSV; {save_as}")
    if data.startswith(b"%PDF"):
        raise ExtractRejected(f"{name}: this is a PDF, not a CSV; {save_as}")
    if b"\x00" in data:
        raise ExtractRejected(f"{name}: the file is binary (it contains NUL bytes), not CSV text; {save_as}")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        if _UTF8_SEQUENCE.search(data):
            raise ExtractRejected(
                f"{name}: the file mixes UTF-8 text with text in another encoding (line {line}), so its "
                f"accented letters cannot be read reliably; {save_as}"
            ) from exc
        try:
            return data.decode("cp1252"), line
        except UnicodeDecodeError:
            raise ExtractRejected(
                f"{name}: the file is neither UTF-8 nor Windows-1252 text (line {line} has a byte that is "
                f"not a character in either); {save_as}"
            ) from exc


def windows_1252_warning(line: int, save_again: str = "save it") -> str:
    """What to say about a file read as Windows-1252 (first non-UTF-8 byte on ``line``)."""
    return (
        f"the file is not UTF-8 (first on line {line}); it was read as Windows-1252 ('ANSI'), so check that "
        f"accented letters (such as é) came out right; next time {save_again} in Excel with File > Save As > "
        "'CSV UTF-8 (Comma delimited) (*.csv)'"
    )


def _decode(name: str, data: bytes) -> tuple[str, pa.Table]:
    """The file's text and file-level warnings (:func:`decode_text`; a Windows-1252 file is warned about)."""
    text, line = decode_text(name, data)
    if line is None:
        return text, _NO_ENTRIES
    return text, _entries([None], ["read as Windows-1252"], [windows_1252_warning(line)])


def _cut_off(text: str, records: pa.Table) -> pa.Table:
    """A warning on the last row when the file does not end with a line break although its other
    lines do: a copy or upload cut short ends like that, and a score cut from 78 to 7 reads as a
    plain number. The row still loads (a file saved by a tool that writes no final line break
    would otherwise always lose its last pupil); the warning names its line so it can be checked."""
    if text.endswith(("\n", "\r")) or not records.num_rows:
        return _NO_ENTRIES
    last = physical_lines(text)
    if records.column("line")[-1].as_py() != last:  # the last line was not a row (blank or set aside)
        return _NO_ENTRIES
    return _entries(
        [last],
        ["no line break at the end"],
        [
            f"line {last}, the last line, does not end with a line break while the file's other lines do: the file "
            "may have been cut off, so this row's last value may be incomplete; the row was loaded; check it "
            "against your records and send the whole file again if it was cut"
        ],
        [None],
    )


def _concat_entries(*tables: pa.Table) -> pa.Table:
    kept = [t for t in tables if t.num_rows]
    return pa.concat_tables(kept) if len(kept) > 1 else (kept[0] if kept else _NO_ENTRIES)


def _read_workbook(name: str, data: bytes) -> tuple[list[str], pa.Table, pa.Table, pa.Table]:
    """The first sheet's header, records (``f0..`` and ``line``), no format errors, and warnings."""
    try:
        sheet_rows, numbers, other_pupil_sheets, uncalculated = workbook.read_first_sheet(data)
    except workbook.SheetTooLarge as exc:
        raise ExtractRejected(
            f"{name}: the first sheet has a value in cell {exc.cell}, beyond the {workbook.MAX_SHEET_ROWS:,} rows "
            f"and {workbook.MAX_SHEET_COLUMNS} columns an extract may fill (one row per pupil); delete what is "
            f"there (Ctrl+End in Excel goes to it) and send the file again, or {SAVE_AS_CSV.removeprefix('in Excel ')}"
        ) from exc
    except workbook.WorkbookTooLarge as exc:
        raise ExtractRejected(
            f"{name}: the workbook unpacks to {exc}, far more than an extract needs; "
            f"{SAVE_AS_CSV.removeprefix('in Excel ')}"
        ) from exc
    except workbook.WorkbookUnreadable as exc:
        raise ExtractRejected(
            f"{name}: could not be read as an Excel workbook (.xlsx): it may be damaged, password-protected "
            "or another kind of zip file; open it in Excel and save it again, or "
            f"{SAVE_AS_CSV.removeprefix('in Excel ')}"
        ) from exc
    if not any(any(cell.strip() for cell in row) for row in sheet_rows):
        raise ExtractRejected(f"{name}: the workbook's first sheet is empty; put the extract on the first sheet")
    header = sheet_rows[0]
    if not any(cell.strip() for cell in header):
        raise ExtractRejected(
            f"{name}: the first row of the first sheet is blank; the first row must be the header row "
            "(school_urn, pupil_id, ...)"
        )
    width = len(header)
    body = sheet_rows[1:]
    extra = sorted({i for row in body for i in range(width, len(row)) if row[i].strip()})
    header = header + [""] * (max(extra) + 1 - width if extra else 0)  # unnamed columns, dropped by name
    width = len(header)
    columns = [f"f{i}" for i in range(width)]
    table = pa.table(
        {c: pa.array([row[i] if i < len(row) else "" for row in body], type=pa.string()) for i, c in enumerate(columns)}
        | {"line": pa.array(numbers[1:], type=pa.int64())}
    )
    warnings = _uncalculated_warning(uncalculated)
    if other_pupil_sheets:
        warnings = _concat_entries(warnings, _entries(
            [None],
            ["pupils on another sheet"],
            [
                f"{other_pupil_sheets} other sheet{'s' if other_pupil_sheets > 1 else ''} of the workbook "
                f"{'have' if other_pupil_sheets > 1 else 'has'} a pupil_id column; only the first sheet was read, "
                "so put every pupil on the first sheet and send the file again"
            ],
        ))
    return header, _drop_blank(table, columns), _NO_ENTRIES, warnings


def _uncalculated_warning(cells: list[str]) -> pa.Table:
    """A file warning naming the cells that hold a formula with no saved value (read as blank)."""
    if not cells:
        return _NO_ENTRIES
    shown = ", ".join(cells[:5]) + (f" and {len(cells) - 5} more" if len(cells) > 5 else "")
    one = len(cells) == 1
    return _entries(
        [None],
        ["formula with no saved value"],
        [
            f"{'cell' if one else f'{len(cells)} cells'} {shown} {'holds a formula' if one else 'hold formulas'} "
            "with no value saved in the file (it was written by a program that does not calculate), so "
            f"{'the cell was' if one else 'they were'} read as blank: open the file in Excel and save it again, "
            "then send it again"
        ],
    )


def _header(name: str, text: str) -> list[str]:
    """The header row's cells; a header wider than a workbook may be (:data:`workbook.MAX_SHEET_COLUMNS`)
    rejects the file, counted on the line before any cell is split out (400,000 columns took 4 GB)."""
    first = _first_line(text)
    if first.count('"') % 2:
        raise ExtractRejected(
            f'{name}: the header row has a quote (") that is not closed on the same line; '
            "remove it and send the file again"
        )
    width = _header_width(first)
    if width > workbook.MAX_SHEET_COLUMNS:
        raise ExtractRejected(
            f"{name}: the header row has {width:,} columns, more than the {workbook.MAX_SHEET_COLUMNS} an extract "
            f"may have (the extract format has {len(CONTRACT_COLUMNS)}: {', '.join(REQUIRED_COLUMNS)} and the "
            "optional ones); delete the other columns (a spreadsheet may also have saved empty columns far to "
            "the right) and send the file again with only the extract's columns"
        )
    try:
        header = next(csv.reader([first]), [])
    except csv.Error as exc:  # a heading longer than the csv module reads
        raise ExtractRejected(
            f"{name}: the header row could not be read ({exc}); the first line must be the header row "
            "(school_urn, pupil_id, ...)"
        ) from exc
    if not any(cell.strip() for cell in header):
        raise ExtractRejected(
            f"{name}: the first line is blank; the first line must be the header row (school_urn, pupil_id, ...)"
        )
    return header


_QUOTED = re.compile(r'"[^"]*"')


def _first_line(text: str) -> str:
    end = _LINE_BREAK.search(text)
    return text[: end.start()] if end else text


def _leading_cells(line: str) -> list[str]:
    """The line's first :data:`workbook.MAX_SHEET_COLUMNS` cells (or a few fewer when a quoted cell holds commas),
    read without splitting the rest of a longer line."""
    cut = next(itertools.islice(re.finditer(",", line), workbook.MAX_SHEET_COLUMNS - 1, None), None)
    return next(csv.reader([line[: cut.start()] if cut else line]), [])


def _header_width(first: str) -> int:
    """The header line's columns, counted without splitting it: its commas outside double quotes, plus one
    (a line with fewer commas than the cap is not searched for quotes)."""
    commas = first.count(",")
    return commas + 1 if commas < workbook.MAX_SHEET_COLUMNS else _QUOTED.sub("", first).count(",") + 1


def _match_columns(name: str, header: list[str]) -> tuple[dict[str, int], list[str]]:
    """Contract column -> position in the file, and the names of the columns to drop."""
    positions: dict[str, int] = {}
    dropped: list[str] = []
    for index, cell in enumerate(header):
        column = normalise_header(cell)
        if column in CONTRACT_COLUMNS:
            if column in positions:
                raise ExtractRejected(
                    f"{name}: the header has two '{column}' columns (columns {positions[column] + 1} and "
                    f"{index + 1}); keep one and send the file again"
                )
            positions[column] = index
        else:
            dropped.append(cell.strip() or f"(unnamed column {index + 1})")
    missing = [c for c in REQUIRED_COLUMNS if c not in positions]
    if missing:
        first_line = ",".join(header)
        if len(header) <= 2 and first_line.count(";") >= 2:
            raise ExtractRejected(
                f"{name}: the file is separated by semicolons, not commas; {SAVE_AS_CSV} "
                "(on a computer set to a European language, check the list separator is a comma)"
            )
        if len(header) <= 2 and first_line.count("\t") >= 2:
            raise ExtractRejected(f"{name}: the file is separated by tabs, not commas; {SAVE_AS_CSV}")
        quoted = ", ".join(f"'{c}'" for c in missing)
        renames = header_renames(missing, [cell for i, cell in enumerate(header) if i not in positions.values()])
        raise ExtractRejected(
            f"{name}: required column{'s' if len(missing) > 1 else ''} {quoted} "
            f"{'are' if len(missing) > 1 else 'is'} missing from the header row; "
            + (f"rename {renames} if that is what they hold, or add " if renames else "add ")
            + f"{'them' if len(missing) > 1 else 'it'} (required: {', '.join(REQUIRED_COLUMNS)}) and send the file again"
        )
    return positions, dropped


# Header names schools use for a contract column (declared, not guessed): a header cell that is one
# of these, or within difflib's 0.8 similarity of one or of the column's own name, is suggested.
HEADER_SYNONYMS = {
    "school_urn": ("urn", "school", "school urn", "school id", "school number", "dfe number"),
    "pupil_id": ("pupil", "pupil id", "pupil ref", "pupil reference", "student id", "student", "upn", "adno",
                 "admission number"),
    "intervention": ("programme", "program", "intervention name", "project"),
    "outcome_measure": ("measure", "test", "test name", "assessment", "assessment name", "outcome test"),
    "arm": ("group", "allocation", "condition", "treatment", "randomised to", "randomized to", "treatment group"),
    "outcome": ("score after", "post test", "posttest", "post score", "post test score", "outcome score",
                "final score", "score", "result"),
    "baseline": ("score before", "pre test", "pretest", "pre score", "pre test score", "baseline score"),
}


def header_renames(missing: list[str], cells: list[str]) -> str:
    """'Group' -> 'arm', ...: the header cells that look like a missing contract column ('' if none)."""
    def words(text: str) -> str:
        return re.sub(r"[\s_\-]+", " ", text.strip().lstrip("\ufeff")).strip().lower()

    names = {words(n): column for column in missing for n in (column, *HEADER_SYNONYMS.get(column, ()))}
    pairs, used = [], set()
    for cell in cells:
        key = words(cell)
        close = difflib.get_close_matches(key, list(names), n=1, cutoff=0.8)
        column = names.get(key) or (names[close[0]] if close else None)
        if column and column not in used and cell.strip():
            used.add(column)
            pairs.append(f"'{cell.strip()[:40]}' to '{column}'")
    return ", ".join(pairs)


def physical_lines(text: str) -> int:
    """Lines in ``text`` as an editor counts them (``\\r\\n``, ``\\r`` or ``\\n`` ends a line)."""
    breaks = text.count("\n") + text.count("\r") - text.count("\r\n")
    return breaks + (0 if text.endswith(("\n", "\r")) else 1)


def _parse_records(name: str, text: str, width: int) -> tuple[pa.Table, pa.Table]:
    """Data records as string columns ``f0..`` plus ``line``, and the lines that are not records.

    Fast path: pyarrow's reader, kept only when every record is one physical line of the header's
    width (records == physical lines). Otherwise (a ragged row, a quoted value running over lines,
    an unclosed quote) the file is read line by line so no line is lost silently.
    """
    invalid: list[int] = []

    def on_invalid(row) -> str:
        invalid.append(row.number or 0)
        return "skip"

    columns = [f"f{i}" for i in range(width)]
    try:
        table = pacsv.read_csv(
            io.BytesIO(text.encode("utf-8")),
            read_options=pacsv.ReadOptions(column_names=columns, use_threads=False, block_size=1 << 26),
            parse_options=pacsv.ParseOptions(
                newlines_in_values=True, ignore_empty_lines=False, invalid_row_handler=on_invalid
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in columns},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowException):
        invalid.append(-1)
        table = None
    if invalid or table is None or table.num_rows != physical_lines(text):
        return _parse_records_by_line(text, width)
    table = table.slice(1)  # the header
    table = table.append_column("line", pa.array(np.arange(2, table.num_rows + 2, dtype=np.int64)))
    return _drop_blank(table, columns), _NO_ENTRIES


def _parse_records_by_line(text: str, width: int) -> tuple[pa.Table, pa.Table]:
    """The csv module's reading with every physical line accounted for.

    A record that runs over several lines (a quote opened and closed on different lines, or never
    closed) is not kept: each of its lines is read on its own instead; a line with an unmatched
    quote is set aside naming the lines that ran together, and the others load. A record of the
    wrong width is set aside with its width.
    """
    lines = _LINE_BREAK.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    good, good_lines = [], []
    bad_lines, bad_rules, bad_reasons = [], [], []

    def wrong_width(line: int, values: int) -> None:
        bad_lines.append(line)
        bad_rules.append("wrong number of values")
        bad_reasons.append(
            f"the row has {values} values but the header has {width} columns; check for a missing or "
            "extra comma (a value containing a comma must be in double quotes)"
        )

    for start, end, record in _records_by_line(lines):
        if start == 1:
            continue  # the header (checked to be one line)
        if start == end and record is not None:
            if len(record) == width:
                good.append(record)
                good_lines.append(start)
            elif any(cell.strip() for cell in record):
                wrong_width(start, len(record))
            continue
        for line in range(start, end + 1):
            raw = lines[line - 1]
            if not raw.strip(" \t,"):
                continue
            record = _one_line_record(raw)
            if record is None:
                bad_lines.append(line)
                bad_rules.append("unmatched quote")
                bad_reasons.append(
                    f'this line has a quote (") that is not closed on the same line, so lines {start} to {end} '
                    "ran together as one value; each line was read on its own instead. Remove the stray quote "
                    "(no value may run over two lines) and send the file again"
                )
                continue
            if len(record) == width:
                good.append(record)
                good_lines.append(line)
            else:
                wrong_width(line, len(record))
    columns = [f"f{i}" for i in range(width)]
    table = pa.table(
        {c: pa.array([r[i] for r in good], type=pa.string()) for i, c in enumerate(columns)}
        | {"line": pa.array(good_lines, type=pa.int64())}
    )
    errors = _entries(bad_lines, bad_rules, bad_reasons, [None] * len(bad_lines))
    return _drop_blank(table, columns), errors.sort_by("line")


def _records_by_line(lines: list[str]) -> Iterator[tuple[int, int, list[str] | None]]:
    """Each CSV record with its first and last physical line. A quote left open until the csv module
    gives up (a value over its field limit) is one record of every line left, with no values: the
    caller reads those lines one by one."""
    reader = csv.reader(iter(lines), strict=False)
    previous = 0
    try:
        for record in reader:
            yield previous + 1, reader.line_num, record
            previous = reader.line_num
    except csv.Error:
        yield previous + 1, len(lines), None


def _one_line_record(raw: str) -> list[str] | None:
    """One line read on its own as a CSV record; None when a quote on it is left open."""
    if raw.count('"') % 2:
        return None
    try:
        return next(csv.reader([raw], strict=True), [])
    except csv.Error:
        return None


def _drop_blank(table: pa.Table, columns: list[str]) -> pa.Table:
    """Leave out rows whose every value is blank (blank lines, ',,,,' rows a spreadsheet adds)."""
    if table.num_rows == 0:
        return table
    # A row has a value when its values run together still hold something besides whitespace.
    joined = pc.binary_join_element_wise(*(table.column(c) for c in columns), "")
    return table.filter(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(joined)), 0))


# ---------------------------------------------------------------------------------------------
# Validating (pyarrow compute over the whole file; reasons are built only for the rows flagged)


def only_urn(path: Path) -> str | None:
    """The one valid URN every row of a delivered CSV carries, read leniently (for a file rejected
    whole, so its school can still be told why); None for a workbook, an unreadable or large file,
    a file without a ``school_urn`` column, or rows with several or invalid URNs."""
    try:
        path = Path(path)
        if path.stat().st_size > max_file_bytes():
            return None
        data = path.read_bytes()
        if data.startswith(b"PK\x03\x04"):
            return None
        text, _ = _decode(path.name, data)
        header = [normalise_header(cell) for cell in _leading_cells(_first_line(text))]
        if "school_urn" not in header:
            return None
        index = header.index("school_urn")
        records = csv.reader(io.StringIO(text, newline=""))  # a row at a time: a big file is never one list
        next(records)
        urns: set[str] = set()
        for record in records:
            if any(c.strip() for c in record):
                urns.add((record[index] if index < len(record) else "").strip())
                if len(urns) > 1:
                    return None
    except (ExtractRejected, OSError, csv.Error, StopIteration):
        return None
    return next(iter(urns)) if len(urns) == 1 and re.fullmatch(_URN, next(iter(urns))) else None


def school_of(path: Path) -> str | None:
    """The one school a delivered file is for: its single valid URN; None when the file is
    rejected, holds several schools, or has no valid URN. (For grouping files by school.)"""
    try:
        rows = read_extract(path).rows
    except ExtractRejected:
        return None
    schools = valid_urns(rows.column("school_urn").combine_chunks())
    return schools[0] if len(schools) == 1 else None


def valid_urns(urn: pa.Array) -> list[str]:
    """The distinct well-formed (6-digit) URNs in a ``school_urn`` column, sorted."""
    return sorted(pc.unique(urn.filter(pc.match_substring_regex(urn, _URN))).to_pylist())


@dataclass
class _Rows:
    """A file's rows read once for the rules: each contract column as trimmed text (``col``), which
    cells are blank (``empty``) or hold a value the column should not (``odd``), the scores as numbers,
    the coded columns as read, and the masks the whole-file checks found."""

    file_name: str
    col: dict[str, pa.Array]
    line: pa.Array
    empty: dict[str, pa.Array]
    odd: dict[str, pa.Array]
    pupil_ids: pa.Array
    arm: pa.Array
    arm_ok: pa.Array
    numbers: dict[str, pa.Array]
    is_number: dict[str, pa.Array]
    coded: dict[str, tuple[pa.Array, pa.Array]]
    invisible: dict[str, pa.Array]
    bad_name: dict[str, pa.Array] = field(default_factory=dict)
    bad_round: pa.Array | None = None
    duplicates: tuple | None = None  # (mask, reasons) once :func:`_duplicates` has looked

    def finite(self, column: str) -> pa.Array:
        return pc.fill_null(pc.is_finite(self.numbers[column]), False)

    def shown(self, column: str, take: pa.Array) -> pa.Array:
        """Bad values as a reason may quote them: only those :func:`quotable` allows."""
        values = self.col[column].take(take)
        is_pupil_id = pc.and_(pc.is_in(values, value_set=self.pupil_ids), pc.invert(self.empty[column].take(take)))
        text = pc.replace_substring_regex(values, r"[\r\n\t]+", " ")
        safe = quotable(column, values, self.pupil_ids)
        return pc.if_else(is_pupil_id, _PUPIL_ID_SHOWN, pc.if_else(safe, _join("'", text, "'"), _NOT_SHOWN))


def _read_rows(extract: Extract) -> _Rows:
    """The file's columns as the rules read them. Invisible direction/control characters (a U+202E
    override reverses the text a page shows) are removed from names first; an absence marker
    (``abs``, ``absent``) in a score column is a missing score, nothing to fix."""
    rows = extract.rows
    blank = pa.repeat(pa.scalar("", pa.string()), rows.num_rows)
    col = {c: (_one_array(rows.column(c)) if c in rows.column_names else blank) for c in CONTRACT_COLUMNS}
    invisible = {}
    for c in ("intervention", "outcome_measure", "round"):
        distinct = pc.unique(col[c])  # a few names: test them, not every row
        odd_names = distinct.filter(pc.match_substring_regex(distinct, names.INVISIBLE_PATTERN))
        if len(odd_names):
            invisible[c] = pc.is_in(col[c], value_set=odd_names)
            col[c] = pc.utf8_trim_whitespace(pc.replace_substring_regex(col[c], names.INVISIBLE_PATTERN, ""))
    for c in ("outcome", "baseline"):
        col[c] = pc.if_else(pc.match_substring_regex(col[c], _ABSENT, ignore_case=True), "", col[c])
    empty = {c: pc.equal(pc.utf8_length(v), 0) for c, v in col.items()}
    arm = pc.utf8_lower(col["arm"])
    is_number = {c: pc.match_substring_regex(col[c], _NUMBER) for c in ("outcome", "baseline")}
    coded = {
        "fsm": spellings.yes_no(col["fsm"]),
        "send": spellings.send(col["send"]),
        "gender": spellings.gender(col["gender"]),
        "year_group": spellings.year_group(col["year_group"]),
    }
    arm_ok = pc.is_in(arm, value_set=pa.array(ARMS))
    odd = {  # non-blank values a column should not hold; free-text columns: every value
        "school_urn": pc.invert(pc.or_(pc.match_substring_regex(col["school_urn"], _URN), empty["school_urn"])),
        "arm": pc.invert(pc.or_(arm_ok, empty["arm"])),
        **{c: pc.invert(pc.or_(is_number[c], empty[c])) for c in ("outcome", "baseline")},
        **{c: pc.invert(understood) for c, (_, understood) in coded.items()},
        **{c: pc.invert(empty[c]) for c in ("intervention", "outcome_measure", "round")},
    }
    numbers = {c: pc.cast(pc.if_else(is_number[c], col[c], pa.scalar(None, pa.string())), pa.float64())
               for c in ("outcome", "baseline")}
    pupil_ids = pc.unique(col["pupil_id"].filter(pc.invert(empty["pupil_id"])))
    return _Rows(extract.file_name, col, _one_array(rows.column("line")), empty, odd, pupil_ids, arm, arm_ok,
                 numbers, is_number, coded, invisible)


def _check_whole_file(rows: _Rows) -> None:
    """Reject a file whose columns look swapped with ``pupil_id`` or whose outcomes use decimal commas
    (:mod:`microtrials.ingest.extract_checks`); then blank trial-name cells that look like a pupil identifier,
    a name or a date (their rows are set aside; the optional ``round`` only loses the cell), so no
    table, report or reason ever carries them."""
    col, empty, odd = rows.col, rows.empty, rows.odd
    for problem in (
        checks.swapped_columns(col, empty, odd, rows.pupil_ids),
        checks.decimal_commas(col["outcome"], odd["outcome"], empty["outcome"]),
    ):
        if problem:
            raise ExtractRejected(f"{rows.file_name}: {problem}")
    rows.bad_name = {
        c: checks.identifier_like_names(col[c], empty[c], rows.pupil_ids) for c in ("intervention", "outcome_measure")
    }
    for c, mask in rows.bad_name.items():
        if mask.true_count:
            col[c] = pc.if_else(mask, pa.scalar("", pa.string()), col[c])
    rows.bad_round = checks.identifier_like_names(col["round"], empty["round"], rows.pupil_ids, rare_rule=False)
    if rows.bad_round.true_count:
        col["round"] = pc.if_else(rows.bad_round, pa.scalar("", pa.string()), col["round"])
        empty["round"] = pc.or_(empty["round"], rows.bad_round)


QUARANTINE, WARN = "quarantine", "warn"  # a rule's action: keep the row out, or blank the value and load it


@dataclass(frozen=True)
class Rule:
    """One named rule of the extract contract (``docs/loading.md``): the rows it flags
    (``rows(file) -> mask``), the column it is about, its reason (plain text, or
    ``reason(file, take)`` giving the reasons of the flagged rows ``take``) and its action."""

    name: str
    column: str
    rows: Callable[[_Rows], pa.Array | None]
    reason: str | Callable[[_Rows, pa.Array], pa.Array]
    action: str = QUARANTINE


def _shown_reason(column: str, before: str, after: str):
    """A reason quoting each flagged value when the identifier rule allows it."""
    return lambda file, take: _join(before, file.shown(column, take), after)


def _arm_reason(file: _Rows, take: pa.Array) -> pa.Array:
    return pc.if_else(
        file.empty["arm"].take(take),
        "arm is empty; arm must be 'intervention' or 'control', got nothing; correct the pupil's randomised arm",
        _join("arm must be 'intervention' or 'control', got ", file.shown("arm", take),
              "; correct the pupil's randomised arm"),
    )


def _score_rules(column: str, keeps: str) -> list[Rule]:
    name = f"{column} not a number"
    return [
        Rule(name, column, lambda f: f.odd[column], _shown_reason(
            column, f"{column} is not a number, got ",
            f"; {keeps}. If the pupil has a score, write it with digits and a decimal point only"), WARN),
        Rule(name, column, lambda f: pc.and_(f.is_number[column], pc.invert(f.finite(column))), _shown_reason(
            column, f"{column} is too large to be a score, got ", f"; {keeps}. Correct the score"), WARN),
    ]


def _coded_rule(column: str, meaning: str) -> Rule:
    return Rule(f"{column} not understood", column, lambda f: f.odd[column], _shown_reason(
        column, f"{column} should be {meaning} or blank, got ",
        "; it was left blank for this pupil, whose results still count"), WARN)


def _name_rule(column: str) -> Rule:
    return Rule(
        f"{column} looks like an identifier", column, lambda f: f.bad_name.get(column),
        f"{column} holds a value that looks like a pupil identifier, a name or a date (or is over "
        f"{checks.NAME_MAX_CHARS} characters), not shown here; write the {column} as the trial names it")


def _invisible_rule(column: str) -> Rule:
    return Rule(
        f"{column} had invisible characters", column, lambda f: f.invisible.get(column),
        f"{column} held invisible characters (text-direction, zero-width, tag or control characters: they can "
        "make a name show reversed or hide text in it); they were removed and the row loaded; remove them from "
        "your file", WARN)


RULES: tuple[Rule, ...] = (
    # ---- a row is kept out: a bad required identifier or randomisation field, or a duplicate
    Rule("school_urn missing", "school_urn", lambda f: f.empty["school_urn"],
         "school_urn is empty; fill in the school's 6-digit URN"),
    Rule("school_urn not 6 digits", "school_urn", lambda f: f.odd["school_urn"],
         lambda f, take: _urn_reason(f.col["school_urn"].take(take))),
    Rule("pupil_id missing", "pupil_id", lambda f: f.empty["pupil_id"],
         "pupil_id is empty; give every pupil the school's own pupil reference"),
    Rule("intervention missing", "intervention", lambda f: f.empty["intervention"],
         "intervention is empty; name the intervention the pupil was in"),
    Rule("outcome_measure missing", "outcome_measure", lambda f: f.empty["outcome_measure"],
         "outcome_measure is empty; name the assessment used as the outcome"),
    _name_rule("intervention"),
    _name_rule("outcome_measure"),
    Rule("arm not 'intervention' or 'control'", "arm", lambda f: pc.invert(f.arm_ok), _arm_reason),
    Rule("duplicate pupil row", "pupil_id", lambda f: _duplicates(f)[0], lambda f, take: _duplicates(f)[1](take)),
    # ---- a value is blanked with a warning; the pupil loads and counts (intention to treat)
    *_score_rules("outcome", "kept as no post-test for this pupil (they still count as randomised)"),
    *_score_rules("baseline", "left blank for this pupil"),
    _invisible_rule("intervention"),
    _invisible_rule("outcome_measure"),
    _invisible_rule("round"),
    Rule("round looks like an identifier", "round", lambda f: f.bad_round,
         f"round held a value that looks like a pupil identifier (or is over {checks.NAME_MAX_CHARS} characters), "
         "not shown here; it was left blank and the row loaded; write the round as the trial registry names it",
         WARN),
    _coded_rule("fsm", "'Y' or 'N' (also Yes/No, True/False, 1/0)"),
    _coded_rule("send", "'Y' or 'N' (also Yes/No, 1/0, or the census codes K and E)"),
    _coded_rule("gender", "'F' or 'M' (also Female/Male, Girl/Boy)"),
    _coded_rule("year_group", "a year from 0 (Reception) to 13 (also 'Year 7', 'Y7', 'R')"),
)


def _rule_entries(file: _Rows, rule: Rule) -> pa.Table | None:
    """One entry (ENTRY_SCHEMA) per row ``rule`` flags, or None."""
    mask = rule.rows(file)
    if mask is None:
        return None
    mask = pc.fill_null(mask, False) if mask.null_count else mask
    if not mask.true_count:
        return None
    take = pc.indices_nonzero(mask)
    count = len(take)
    text = rule.reason(file, take) if callable(rule.reason) else pa.array([rule.reason] * count, type=pa.string())
    return pa.table(
        {
            "line": file.line.take(take),
            "school_urn": pa.nulls(count, pa.string()),
            "intervention": file.col["intervention"].take(take),
            "outcome_measure": file.col["outcome_measure"].take(take),
            "round": file.col["round"].take(take),
            "column_name": pa.array([rule.column] * count, type=pa.string()),
            "rule": pa.array([rule.name] * count, type=pa.string()),
            "reason": text,
        },
        schema=ENTRY_SCHEMA,
    )


def validate(extract: Extract) -> ValidatedExtract:
    """Check every row against :data:`RULES` (the contract's rules, listed in ``docs/loading.md``).

    Raises :class:`ExtractRejected` for a file holding rows for several schools (the contract is
    one file per school per delivery, and a re-delivery replaces by school), and for a file whose
    columns look swapped (a column that should hold a few codes or trial names holds values like
    pupil identifiers), so no identifier is ever stored or published as a trial name or a code.
    """
    file = _read_rows(extract)
    _check_whole_file(file)
    found = {QUARANTINE: [extract.format_errors], WARN: [extract.warnings]}
    for rule in RULES:
        found[rule.action].append(_rule_entries(file, rule))
    quarantine = _combined([t for t in found[QUARANTINE] if t is not None and t.num_rows])
    out_lines = pc.unique(quarantine.column("line").drop_null())
    warnings = _combined([t for t in found[WARN] if t is not None and t.num_rows])
    if len(out_lines):  # a row kept out has its reasons in quarantine; warnings are for loaded rows
        of_rows_out = pc.fill_null(pc.is_in(warnings.column("line"), value_set=out_lines), False)
        warnings = warnings.filter(pc.invert(of_rows_out))
    school = _one_school(extract.file_name, file.col["school_urn"])
    trials = sorted(
        (intervention, measure)
        for intervention, measure in (t.split("\x1f") for t in _distinct_trials(file.col))
        if intervention and measure
    )
    return ValidatedExtract(
        extract.file_name,
        extract.delivery_id,
        school,
        trials,
        extract.rows.num_rows + extract.format_errors.num_rows,
        _typed(file, out_lines),
        _with_school(quarantine, school),
        extract.columns_dropped,
        _with_school(warnings, school),
    )


def _one_school(name: str, urn: pa.Array) -> str | None:
    """The file's one valid URN (None for none); a file with several is rejected."""
    schools = valid_urns(urn)
    if len(schools) > 1:
        listed = ", ".join(schools[:5]) + (", ..." if len(schools) > 5 else "")
        raise ExtractRejected(
            f"{name}: the file holds rows for {len(schools)} schools (URNs {listed}); "
            "the contract is one file per school per delivery: split it into one file per school"
        )
    return schools[0] if schools else None


def _typed(file: _Rows, out_lines: pa.Array) -> pa.Table:
    """The rows no rule kept out, typed (GOOD_SCHEMA); values a warning blanked are null."""
    good_mask = pc.invert(pc.is_in(file.line, value_set=out_lines)) if len(out_lines) else None

    def good(values):
        return values if good_mask is None else values.filter(good_mask)

    def known(values, keep):
        """``values`` where ``keep`` holds, else null (blank, not understood, not finite)."""
        return good(pc.if_else(pc.fill_null(keep, False), values, pa.scalar(None, values.type)))

    col, coded = file.col, file.coded
    return pa.table(
        {
            "school_urn": good(col["school_urn"]),
            "pupil_id": good(col["pupil_id"]),
            "intervention": good(col["intervention"]),
            "outcome_measure": good(col["outcome_measure"]),
            "arm": good(file.arm),
            "outcome": known(file.numbers["outcome"], file.finite("outcome")),
            "baseline": known(file.numbers["baseline"], file.finite("baseline")),
            "fsm": good(coded["fsm"][0]),
            "gender": good(coded["gender"][0]),
            "year_group": good(coded["year_group"][0]),
            "send": good(coded["send"][0]),
            "round": known(col["round"], pc.invert(file.empty["round"])),
            "line": good(file.line),
        },
        schema=GOOD_SCHEMA,
    )


def _distinct_trials(col: dict) -> list[str]:
    """The file's distinct (intervention, outcome_measure) pairs, as 'intervention\x1foutcome_measure'."""
    return pc.unique(pc.binary_join_element_wise(col["intervention"], col["outcome_measure"], "\x1f")).to_pylist()


def _combined(entries: list[pa.Table]) -> pa.Table:
    """Entries in line order (file-level ones, with no line, first)."""
    if not entries:
        return _NO_ENTRIES
    if len(entries) == 1:  # one rule's entries: already in line order
        return entries[0]
    order = [("line", "ascending", "at_start"), ("column_name", "ascending", "at_start")]
    return pa.concat_tables(entries).sort_by(order)


def _with_school(entries: pa.Table, school: str | None) -> pa.Table:
    """Entries with the file's school, and blank trial names and rounds as null."""
    if not entries.num_rows:
        return entries
    entries = entries.set_column(
        entries.schema.get_field_index("school_urn"), "school_urn", pa.array([school] * entries.num_rows, pa.string())
    )
    for column in ("intervention", "outcome_measure", "round"):
        values = entries.column(column)
        entries = entries.set_column(
            entries.schema.get_field_index(column),
            column,
            pc.if_else(pc.fill_null(pc.equal(pc.utf8_length(values), 0), True), pa.scalar(None, pa.string()), values),
        )
    return entries


def _join(*parts) -> pa.Array:
    """Concatenate strings element-wise (arrays and plain text)."""
    return pc.binary_join_element_wise(*parts, "")


def _urn_reason(values: pa.Array) -> pa.Array:
    """Why a school_urn is not 6 digits, described by its shape (a URN column may hold pupil ids)."""
    digits_only = pc.match_substring_regex(values, r"^[0-9]+$")
    length = pc.cast(pc.utf8_length(values), pa.string())
    return pc.if_else(
        pc.match_substring_regex(values, r"^[0-9]{1,5}$"),
        _join(
            "school_urn must be 6 digits, got ", length, " digits (a spreadsheet may have dropped leading zeros: "
            "format the column as text and re-enter the URN)",
        ),
        pc.if_else(
            digits_only,
            _join("school_urn must be 6 digits, got ", length, " digits; correct it to the school's 6-digit URN"),
            "school_urn must be 6 digits, got other characters; correct it to the school's 6-digit URN",
        ),
    )


def _one_array(column: pa.ChunkedArray) -> pa.Array:
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _duplicates(file: _Rows) -> tuple[pa.Array | None, Callable[[pa.Array], pa.Array]]:
    """The rows whose school + pupil + intervention + outcome_measure (+ round) repeat, and their
    reasons (each names the other lines); a file where most rows repeat is rejected (columns
    swapped or rows pasted twice). Worked out once per file."""
    if file.duplicates is not None:
        return file.duplicates
    empty, line = file.empty, file.line
    keyed = pc.invert(pc.or_(pc.or_(empty["school_urn"], empty["pupil_id"]),
                             pc.or_(empty["intervention"], empty["outcome_measure"])))
    key = pc.binary_join_element_wise(
        *(file.col[c] for c in ("school_urn", "pupil_id", "intervention", "outcome_measure", "round")), "\x1f")
    keyed_count = pc.sum(keyed).as_py() or 0
    result: tuple = (None, lambda take: pa.array([], pa.string()))
    if keyed_count and pc.count_distinct(key.filter(keyed)).as_py() < keyed_count:
        frame = pd.DataFrame({"key": key.to_pylist(), "line": line.to_pylist(), "keyed": keyed.to_pylist()})
        frame = frame[frame["keyed"]]
        repeated = frame[frame["key"].duplicated(keep=False)]
        if len(repeated) >= checks.SWAP_MIN_DISTINCT and len(repeated) > checks.SWAP_SHARE * len(frame):
            raise ExtractRejected(
                f"{file.file_name}: columns may be swapped, or rows repeated: {len(repeated)} of the {len(frame)} rows "
                "share their pupil_id with another row of the same trial; check that the 'pupil_id' header is above "
                "the pupils' references and that no rows were pasted twice, then send the file again"
            )
        lines_of = repeated.groupby("key")["line"].agg(list).to_dict()
        reasons = {
            row_line: "the same school, pupil, intervention and outcome_measure are also on line"
            + ("s " if len(lines_of[k]) > 2 else " ")
            + ", ".join(str(other) for other in lines_of[k] if other != row_line)
            + "; keep one row per pupil per intervention and outcome_measure"
            for k, row_line in zip(repeated["key"], repeated["line"])
        }
        mask = pc.is_in(line, value_set=pa.array(sorted(reasons), type=pa.int64()))
        result = (mask, lambda take: pa.array([reasons[v] for v in line.take(take).to_pylist()], type=pa.string()))
    file.duplicates = result
    return result
