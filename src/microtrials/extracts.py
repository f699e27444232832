"""The school extract contract: read a delivered CSV, validate every row, say why rows are quarantined.

The contract is ``../shared/extract-format.md``. A file that cannot be read as that contract says
is rejected whole (:class:`ExtractRejected`); a row that breaks a rule is quarantined with its line
number (as a spreadsheet shows it: header = line 1) and a plain-English reason, and the rest of the
file loads. Validation is vectorised over the file's rows; no reason ever quotes a pupil_id.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from microtrials.errors import MicrotrialsError

REQUIRED_COLUMNS = ("school_urn", "pupil_id", "intervention", "outcome_measure", "arm", "outcome")
OPTIONAL_COLUMNS = ("baseline", "fsm", "gender", "year_group", "send")
CONTRACT_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS

ARMS = ("intervention", "control")
YEAR_GROUPS = range(0, 14)  # National Curriculum years; Reception is 0
SAVE_AS_CSV = "in Excel use File > Save As > 'CSV UTF-8 (Comma delimited) (*.csv)' and send the file again"

# A plain decimal number: 85, -3.5, .5, 1e3. Nothing else (no '1,5', no thousands separators).
_NUMBER = r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
_URN = r"^[0-9]{6}$"
_SHOWN_VALUE_CHARS = 40


class ExtractRejected(MicrotrialsError):
    """A whole file that cannot be read as the extract contract says; nothing from it is loaded."""


@dataclass
class Extract:
    """A delivered file read into text columns (trimmed), before any rule is checked.

    ``rows`` holds one string column per contract column present and ``line``: the line a
    spreadsheet shows for the row. Blank rows are left out. ``format_errors`` holds rows that could
    not be split into the header's columns, as quarantine entries (they are never loaded).
    """

    file_name: str
    delivery_id: str
    rows: pa.Table
    columns_dropped: list[str]
    format_errors: pa.Table = field(default_factory=lambda: QUARANTINE_SCHEMA.empty_table())


@dataclass
class ValidatedExtract:
    """The rows that keep every rule (typed, ``GOOD_SCHEMA``) and one quarantine entry per
    broken rule per row (``QUARANTINE_SCHEMA``)."""

    file_name: str
    delivery_id: str
    school_urn: str | None
    trials: list[tuple[str, str]]
    rows_read: int
    good: pa.Table
    quarantine: pa.Table
    columns_dropped: list[str]

    @property
    def rows_quarantined(self) -> int:
        return pc.count_distinct(self.quarantine.column("line")).as_py() if self.quarantine.num_rows else 0

    def quarantined_by_reason(self) -> dict[str, int]:
        """Rows per broken rule (a row breaking two rules counts under both)."""
        if not self.quarantine.num_rows:
            return {}
        pairs = set(zip(self.quarantine.column("rule").to_pylist(), self.quarantine.column("line").to_pylist()))
        return dict(sorted(Counter(rule for rule, _ in pairs).items()))


# ---------------------------------------------------------------------------------------------
# Reading


def normalise_header(name: str) -> str:
    """A header cell as the contract names it: trimmed, lower case, spaces/hyphens as underscores."""
    return re.sub(r"[\s\-]+", "_", name.strip().lstrip("\ufeff").strip()).lower()


def read_extract(path: Path, data: bytes | None = None) -> Extract:
    """Read one delivered file (or its bytes, already read) into trimmed text columns, or raise
    :class:`ExtractRejected`."""
    path = Path(path)
    name = path.name
    if data is None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ExtractRejected(
                f"{name}: could not be opened ({exc.strerror}); check the file is readable"
            ) from exc
    delivery_id = hashlib.sha256(data).hexdigest()
    text = _decode(name, data)
    if not text.strip():
        raise ExtractRejected(f"{name}: the file is empty; {SAVE_AS_CSV}")
    header = _header(name, text)
    positions, dropped = _match_columns(name, header, text)
    records, format_errors = _parse_records(name, text, len(header))
    # Keep only contract columns: anything else may hold personal data and never goes further.
    kept = {column: records.column(index) for column, index in positions.items()}
    lines = records.column("line")
    rows = pa.table({**{c: pc.utf8_trim_whitespace(a) for c, a in kept.items()}, "line": lines})
    if rows.num_rows == 0 and format_errors.num_rows == 0:
        raise ExtractRejected(
            f"{name}: the file has a header row but no pupil rows; "
            "send the file with one row per pupil per intervention"
        )
    return Extract(name, delivery_id, rows, dropped, format_errors)


def _decode(name: str, data: bytes) -> str:
    """The file's text, or a rejection saying what the file looks like instead."""
    if not data:
        raise ExtractRejected(f"{name}: the file is empty; {SAVE_AS_CSV}")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ExtractRejected(f"{name}: the file is UTF-16 text (Excel's 'Unicode Text'), not UTF-8; {SAVE_AS_CSV}")
    if data.startswith(b"PK\x03\x04"):
        raise ExtractRejected(f"{name}: this is an Excel workbook (.xlsx) or a zip file, not a CSV; {SAVE_AS_CSV}")
    if data.startswith(b"\xd0\xcf\x11\xe0"):
        raise ExtractRejected(f"{name}: this is an old Excel workbook (.xls), not a CSV; {SAVE_AS_CSV}")
    if data.startswith(b"%PDF"):
        raise ExtractRejected(f"{name}: this is a PDF, not a CSV; {SAVE_AS_CSV}")
    if b"\x00" in data:
        raise ExtractRejected(f"{name}: the file is binary (it contains NUL bytes), not CSV text; {SAVE_AS_CSV}")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ExtractRejected(
            f"{name}: the file is not UTF-8 text (line {line} has a character in another encoding, "
            f"probably Windows 'ANSI'); {SAVE_AS_CSV}"
        ) from exc
    return text


def _header(name: str, text: str) -> list[str]:
    try:
        header = next(csv.reader(io.StringIO(text, newline="")), [])
    except csv.Error as exc:
        raise ExtractRejected(f"{name}: the header row could not be read as CSV ({exc}); {SAVE_AS_CSV}") from exc
    if not any(cell.strip() for cell in header):
        raise ExtractRejected(
            f"{name}: the first line is blank; the first line must be the header row (school_urn, pupil_id, ...)"
        )
    return header


def _match_columns(name: str, header: list[str], text: str) -> tuple[dict[str, int], list[str]]:
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
        first_line = text.split("\n", 1)[0]
        if len(header) <= 2 and first_line.count(";") >= 2:
            raise ExtractRejected(
                f"{name}: the file is separated by semicolons, not commas; {SAVE_AS_CSV} "
                "(on a computer set to a European language, check the list separator is a comma)"
            )
        if len(header) <= 2 and first_line.count("\t") >= 2:
            raise ExtractRejected(f"{name}: the file is separated by tabs, not commas; {SAVE_AS_CSV}")
        quoted = ", ".join(f"'{c}'" for c in missing)
        raise ExtractRejected(
            f"{name}: required column{'s' if len(missing) > 1 else ''} {quoted} "
            f"{'are' if len(missing) > 1 else 'is'} missing from the header row; add "
            f"{'them' if len(missing) > 1 else 'it'} (required: {', '.join(REQUIRED_COLUMNS)}) and send the file again"
        )
    return positions, dropped


def _parse_records(name: str, text: str, width: int) -> tuple[pa.Table, pa.Table]:
    """Data records as string columns ``f0..`` plus ``line``; rows of the wrong width separately.

    Fast path: pyarrow's reader. When a row has the wrong number of values, the file is parsed
    again with the csv module so every record keeps its spreadsheet line number.
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
    if invalid or table is None:
        return _parse_records_slowly(name, text, width)
    table = table.slice(1)  # the header
    table = table.append_column("line", pa.array(np.arange(2, table.num_rows + 2, dtype=np.int64)))
    return _drop_blank(table, columns), QUARANTINE_SCHEMA.empty_table()


def _parse_records_slowly(name: str, text: str, width: int) -> tuple[pa.Table, pa.Table]:
    """The csv module's reading, keeping rows of the wrong width as quarantine entries."""
    try:
        records = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as exc:
        raise ExtractRejected(
            f"{name}: the file could not be read as CSV ({exc}); check for a quote (\") that is opened "
            f"but never closed, then {SAVE_AS_CSV}"
        ) from exc
    good, good_lines, bad_lines, bad_widths = [], [], [], []
    for line, record in enumerate(records[1:], start=2):
        if len(record) == width:
            good.append(record)
            good_lines.append(line)
        elif any(cell.strip() for cell in record):
            bad_lines.append(line)
            bad_widths.append(len(record))
    columns = [f"f{i}" for i in range(width)]
    table = pa.table(
        {c: pa.array([r[i] for r in good], type=pa.string()) for i, c in enumerate(columns)}
        | {"line": pa.array(good_lines, type=pa.int64())}
    )
    count = len(bad_lines)
    errors = pa.table(
        {
            "line": pa.array(bad_lines, type=pa.int64()),
            "school_urn": pa.nulls(count, pa.string()),
            "intervention": pa.nulls(count, pa.string()),
            "outcome_measure": pa.nulls(count, pa.string()),
            "column_name": pa.nulls(count, pa.string()),
            "rule": pa.array(["wrong number of values"] * count, type=pa.string()),
            "reason": pa.array(
                [
                    f"the row has {n} values but the header has {width} columns; check for a missing or "
                    "extra comma (a value containing a comma must be in double quotes)"
                    for n in bad_widths
                ],
                type=pa.string(),
            ),
        },
        schema=QUARANTINE_SCHEMA,
    )
    return _drop_blank(table, columns), errors


def _drop_blank(table: pa.Table, columns: list[str]) -> pa.Table:
    """Leave out rows whose every value is blank (blank lines, ',,,,' rows a spreadsheet adds)."""
    if table.num_rows == 0:
        return table
    # A row has a value when its values run together still hold something besides whitespace.
    joined = pc.binary_join_element_wise(*(table.column(c) for c in columns), "")
    return table.filter(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(joined)), 0))


# ---------------------------------------------------------------------------------------------
# Validating (pyarrow compute over the whole file; reasons are built only for the rows flagged)

QUARANTINE_SCHEMA = pa.schema(
    [
        ("line", pa.int64()),
        ("school_urn", pa.string()),
        ("intervention", pa.string()),
        ("outcome_measure", pa.string()),
        ("column_name", pa.string()),
        ("rule", pa.string()),
        ("reason", pa.string()),
    ]
)

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
        ("line", pa.int64()),
    ]
)


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


def validate(extract: Extract) -> ValidatedExtract:
    """Check every row against the contract's rules.

    Raises :class:`ExtractRejected` for a file holding rows for several schools: the contract is
    one file per school per delivery, and a re-delivery replaces by school.
    """
    rows = extract.rows
    n = rows.num_rows
    blank = pa.array([""] * n, type=pa.string())
    col = {c: (rows.column(c).combine_chunks() if c in rows.column_names else blank) for c in CONTRACT_COLUMNS}
    line = rows.column("line").combine_chunks()
    empty = {c: pc.equal(pc.utf8_length(v), 0) for c, v in col.items()}
    pupil_ids = pc.unique(col["pupil_id"])
    entries: list[pa.Table] = [extract.format_errors] if extract.format_errors.num_rows else []

    def flag(mask, column: str, rule: str, reason) -> None:
        """Quarantine the rows in ``mask``; ``reason(take)`` gives their reasons (text or array)."""
        mask = pc.fill_null(mask, False)
        if not pc.any(mask).as_py():
            return
        take = pc.indices_nonzero(mask)
        count = len(take)
        text = reason(take) if callable(reason) else reason
        if isinstance(text, str):
            text = pa.array([text] * count, type=pa.string())
        entries.append(
            pa.table(
                {
                    "line": line.take(take),
                    "school_urn": pa.nulls(count, pa.string()),
                    "intervention": col["intervention"].take(take),
                    "outcome_measure": col["outcome_measure"].take(take),
                    "column_name": pa.array([column] * count, type=pa.string()),
                    "rule": pa.array([rule] * count, type=pa.string()),
                    "reason": text,
                },
                schema=QUARANTINE_SCHEMA,
            )
        )

    def shown(column: str, take) -> pa.Array:
        """Bad values as a reason may quote them: short, one line, and never a pupil_id."""
        values = col[column].take(take)
        text = pc.replace_substring_regex(values, r"[\r\n\t]+", " ")
        long = pc.greater(pc.utf8_length(text), _SHOWN_VALUE_CHARS)
        text = pc.if_else(long, _join(pc.utf8_slice_codeunits(text, 0, _SHOWN_VALUE_CHARS), "..."), text)
        secret = pc.and_(pc.is_in(values, value_set=pupil_ids), pc.invert(empty[column].take(take)))
        return pc.if_else(secret, "a pupil_id value (are the columns in the wrong order?)", _join("'", text, "'"))

    # school_urn: 6 digits, kept as text
    urn = col["school_urn"]
    urn_ok = pc.match_substring_regex(urn, _URN)
    flag(
        empty["school_urn"],
        "school_urn",
        "school_urn missing",
        "school_urn is empty; fill in the school's 6-digit URN",
    )
    flag(
        pc.and_(pc.invert(urn_ok), pc.invert(empty["school_urn"])),
        "school_urn",
        "school_urn not 6 digits",
        lambda take: _join(
            "school_urn must be 6 digits, got ",
            shown("school_urn", take),
            pc.if_else(
                pc.match_substring_regex(urn.take(take), r"^[0-9]{1,5}$"),
                " (a spreadsheet may have dropped leading zeros: format the column as text and re-enter the URN)",
                "; correct it to the school's 6-digit URN",
            ),
        ),
    )
    # required text
    flag(
        empty["pupil_id"],
        "pupil_id",
        "pupil_id missing",
        "pupil_id is empty; give every pupil the school's own pupil reference",
    )
    flag(
        empty["intervention"],
        "intervention",
        "intervention missing",
        "intervention is empty; name the intervention the pupil was in",
    )
    flag(
        empty["outcome_measure"],
        "outcome_measure",
        "outcome_measure missing",
        "outcome_measure is empty; name the assessment used as the outcome",
    )
    # arm, any case
    arm = pc.utf8_lower(col["arm"])
    flag(
        pc.invert(pc.is_in(arm, value_set=pa.array(ARMS))),
        "arm",
        "arm not 'intervention' or 'control'",
        lambda take: pc.if_else(
            empty["arm"].take(take),
            "arm is empty; arm must be 'intervention' or 'control', got nothing; correct the pupil's randomised arm",
            _join(
                "arm must be 'intervention' or 'control', got ",
                shown("arm", take),
                "; correct the pupil's randomised arm",
            ),
        ),
    )
    # scores: a plain decimal number, finite; blank allowed (outcome blank = attrition)
    numbers = {}
    for column, blank_note in (("outcome", " or blank for no post-test"), ("baseline", " or blank")):
        is_number = pc.match_substring_regex(col[column], _NUMBER)
        parsed = pc.cast(pc.if_else(is_number, col[column], pa.scalar(None, pa.string())), pa.float64())
        flag(
            pc.and_(pc.invert(empty[column]), pc.invert(is_number)),
            column,
            f"{column} not a number",
            lambda take, column=column, note=blank_note: _join(
                f"{column} must be a number{note}, got ", shown(column, take), "; use digits and a decimal point only"
            ),
        )
        flag(
            pc.and_(is_number, pc.invert(pc.is_finite(parsed))),
            column,
            f"{column} not finite",
            lambda take, column=column: _join(
                f"{column} must be a finite number, got ", shown(column, take), "; correct the score"
            ),
        )
        numbers[column] = parsed
    # coded characteristics, any case
    upper = {}
    for column, allowed, meaning in (
        ("fsm", ("Y", "N"), "'Y', 'N' or blank"),
        ("send", ("Y", "N"), "'Y', 'N' or blank"),
        ("gender", ("F", "M"), "'F', 'M' or blank"),
    ):
        upper[column] = pc.utf8_upper(col[column])
        flag(
            pc.invert(pc.is_in(upper[column], value_set=pa.array(allowed + ("",)))),
            column,
            f"{column} not {meaning}",
            lambda take, column=column, meaning=meaning: _join(
                f"{column} must be {meaning}, got ", shown(column, take)
            ),
        )
    year_ok = pc.match_substring_regex(col["year_group"], _YEAR_GROUP)
    flag(
        pc.and_(pc.invert(empty["year_group"]), pc.invert(year_ok)),
        "year_group",
        "year_group not 0 to 13",
        lambda take: _join(
            "year_group must be a whole number from 0 (Reception) to 13 or blank, got ", shown("year_group", take)
        ),
    )
    # one row per school, pupil, intervention and outcome_measure: both rows of a pair are quarantined
    key_columns = ("school_urn", "pupil_id", "intervention", "outcome_measure")
    keyed = pc.invert(
        pc.or_(pc.or_(empty["school_urn"], empty["pupil_id"]), pc.or_(empty["intervention"], empty["outcome_measure"]))
    )
    key = pc.binary_join_element_wise(*(col[c] for c in key_columns), "\x1f")
    keyed_count = pc.sum(keyed).as_py() or 0
    if keyed_count and pc.count_distinct(key.filter(keyed)).as_py() < keyed_count:
        _flag_duplicates(key, keyed, line, flag)

    quarantine = (
        pa.concat_tables(entries).sort_by([("line", "ascending"), ("column_name", "ascending")])
        if entries
        else QUARANTINE_SCHEMA.empty_table()
    )
    good_mask = pc.invert(pc.is_in(line, value_set=pc.unique(quarantine.column("line")))) if entries else None

    schools = valid_urns(urn)
    if len(schools) > 1:
        listed = ", ".join(schools[:5]) + (", ..." if len(schools) > 5 else "")
        raise ExtractRejected(
            f"{extract.file_name}: the file holds rows for {len(schools)} schools (URNs {listed}); "
            "the contract is one file per school per delivery: split it into one file per school"
        )
    school = schools[0] if schools else None
    named = pc.invert(pc.or_(empty["intervention"], empty["outcome_measure"]))
    distinct = (
        pa.table({"intervention": col["intervention"], "outcome_measure": col["outcome_measure"]})
        .filter(named)
        .group_by(["intervention", "outcome_measure"], use_threads=False)
        .aggregate([])
    )
    trials = sorted(zip(distinct.column("intervention").to_pylist(), distinct.column("outcome_measure").to_pylist()))
    quarantine = quarantine.set_column(
        quarantine.schema.get_field_index("school_urn"),
        "school_urn",
        pa.array([school] * quarantine.num_rows, pa.string()),
    )
    for column in ("intervention", "outcome_measure"):
        values = quarantine.column(column)
        quarantine = quarantine.set_column(
            quarantine.schema.get_field_index(column),
            column,
            pc.if_else(pc.equal(pc.utf8_length(values), 0), pa.scalar(None, pa.string()), values),
        )

    def good(values):
        return values if good_mask is None else values.filter(good_mask)

    def null_if_blank(column, values):
        return pc.if_else(good(empty[column]), pa.scalar(None, values.type), good(values))

    typed = pa.table(
        {
            "school_urn": good(urn),
            "pupil_id": good(col["pupil_id"]),
            "intervention": good(col["intervention"]),
            "outcome_measure": good(col["outcome_measure"]),
            "arm": good(arm),
            "outcome": good(numbers["outcome"]),
            "baseline": good(numbers["baseline"]),
            "fsm": null_if_blank("fsm", pc.equal(upper["fsm"], "Y")),
            "gender": null_if_blank("gender", upper["gender"]),
            "year_group": pc.cast(null_if_blank("year_group", col["year_group"]), pa.int32()),
            "send": null_if_blank("send", pc.equal(upper["send"], "Y")),
            "line": good(line),
        },
        schema=GOOD_SCHEMA,
    )
    return ValidatedExtract(
        extract.file_name,
        extract.delivery_id,
        school,
        trials,
        n + extract.format_errors.num_rows,
        typed,
        quarantine,
        extract.columns_dropped,
    )


_YEAR_GROUP = r"^0*(?:[0-9]|1[0-3])$"  # 0 (Reception) to 13


def _join(*parts) -> pa.Array:
    """Concatenate strings element-wise (arrays and plain text)."""
    return pc.binary_join_element_wise(*parts, "")


def _flag_duplicates(key: pa.Array, keyed: pa.Array, line: pa.Array, flag) -> None:
    """Quarantine every row whose school + pupil + intervention + outcome_measure repeats, naming the other lines."""
    frame = pd.DataFrame({"key": key.to_pylist(), "line": line.to_pylist(), "keyed": keyed.to_pylist()})
    frame = frame[frame["keyed"]]
    repeated = frame[frame["key"].duplicated(keep=False)]
    lines_of = repeated.groupby("key")["line"].agg(list).to_dict()
    reasons = {
        row_line: "the same school, pupil, intervention and outcome_measure are also on line"
        + ("s " if len(lines_of[k]) > 2 else " ")
        + ", ".join(str(other) for other in lines_of[k] if other != row_line)
        + "; keep one row per pupil per intervention and outcome_measure"
        for k, row_line in zip(repeated["key"], repeated["line"])
    }
    mask = pc.is_in(line, value_set=pa.array(sorted(reasons), type=pa.int64()))
    flag(
        mask,
        "pupil_id",
        "duplicate pupil row",
        lambda take: pa.array([reasons[v] for v in line.take(take).to_pylist()], type=pa.string()),
    )
