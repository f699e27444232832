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
_NUMBER = r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$"
_URN = r"^\d{6}$"
_WHOLE = r"^\d+$"
_SHOWN_VALUE_CHARS = 40


class ExtractRejected(MicrotrialsError):
    """A whole file that cannot be read as the extract contract says; nothing from it is loaded."""


@dataclass
class Extract:
    """A delivered file read into text columns (trimmed), before any rule is checked.

    ``rows`` holds one column per contract column present (all ``str``) and ``line``: the line a
    spreadsheet shows for the row. Blank rows are left out. ``format_errors`` are rows that could
    not be split into the header's columns (quarantined, not loaded).
    """

    file_name: str
    delivery_id: str
    rows: pd.DataFrame
    columns_dropped: list[str]
    format_errors: pd.DataFrame = field(default_factory=lambda: _empty_quarantine())


@dataclass
class ValidatedExtract:
    """The rows that keep every rule (typed) and one quarantine entry per broken rule per row."""

    file_name: str
    delivery_id: str
    school_urn: str | None
    trials: list[tuple[str, str]]
    rows_read: int
    good: pd.DataFrame
    quarantine: pd.DataFrame  # line, school_urn, intervention, outcome_measure, column_name, rule, reason
    columns_dropped: list[str]

    @property
    def rows_quarantined(self) -> int:
        return int(self.quarantine["line"].nunique())

    def quarantined_by_reason(self) -> dict[str, int]:
        """Rows per broken rule (a row breaking two rules counts under both)."""
        if self.quarantine.empty:
            return {}
        counts = self.quarantine.drop_duplicates(["line", "rule"])["rule"].value_counts()
        return {str(rule): int(n) for rule, n in counts.sort_index().items()}


def _empty_quarantine() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "line": pd.Series([], dtype="int64"),
            "school_urn": pd.Series([], dtype=object),
            "intervention": pd.Series([], dtype=object),
            "outcome_measure": pd.Series([], dtype=object),
            "column_name": pd.Series([], dtype=object),
            "rule": pd.Series([], dtype=object),
            "reason": pd.Series([], dtype=object),
        }
    )


# ---------------------------------------------------------------------------------------------
# Reading


def normalise_header(name: str) -> str:
    """A header cell as the contract names it: trimmed, lower case, spaces/hyphens as underscores."""
    return re.sub(r"[\s\-]+", "_", name.strip().lstrip("\ufeff").strip()).lower()


def read_extract(path: Path) -> Extract:
    """Read one delivered file into trimmed text columns, or raise :class:`ExtractRejected`."""
    path = Path(path)
    name = path.name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ExtractRejected(f"{name}: could not be opened ({exc.strerror}); check the file is readable") from exc
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
    table = pa.table({**{c: pc.utf8_trim_whitespace(a) for c, a in kept.items()}, "line": lines})
    rows = table.to_pandas()
    if rows.empty and format_errors.empty:
        raise ExtractRejected(
            f"{name}: the file has a header row but no pupil rows; send the file with one row per pupil per intervention"
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


def _parse_records(name: str, text: str, width: int) -> tuple[pa.Table, pd.DataFrame]:
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
    return _drop_blank(table, columns), _empty_quarantine()


def _parse_records_slowly(name: str, text: str, width: int) -> tuple[pa.Table, pd.DataFrame]:
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
    errors = _empty_quarantine()
    if bad_lines:
        errors = pd.DataFrame(
            {
                "line": pd.Series(bad_lines, dtype="int64"),
                "school_urn": None,
                "intervention": None,
                "outcome_measure": None,
                "column_name": None,
                "rule": "wrong number of values",
                "reason": [
                    f"the row has {n} values but the header has {width} columns; check for a missing or "
                    "extra comma (a value containing a comma must be in double quotes)"
                    for n in bad_widths
                ],
            }
        )
    return _drop_blank(table, columns), errors


def _drop_blank(table: pa.Table, columns: list[str]) -> pa.Table:
    """Leave out rows whose every value is blank (blank lines, ',,,,' rows a spreadsheet adds)."""
    if table.num_rows == 0:
        return table
    any_value = None
    for c in columns:
        has = pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(table.column(c))), 0)
        any_value = has if any_value is None else pc.or_(any_value, has)
    return table.filter(any_value)


# ---------------------------------------------------------------------------------------------
# Validating


def validate(extract: Extract) -> ValidatedExtract:
    """Check every row against the contract's rules; raise :class:`ExtractRejected` for a file
    holding several schools (the contract is one file per school per delivery)."""
    rows = extract.rows.reset_index(drop=True)
    for column in OPTIONAL_COLUMNS:
        if column not in rows:
            rows[column] = ""
    rows = rows.astype({c: "str" for c in CONTRACT_COLUMNS})
    n = len(rows)
    entries: list[pd.DataFrame] = [extract.format_errors] if not extract.format_errors.empty else []

    def shown(values: pd.Series) -> pd.Series:
        """A bad value as it may appear in a reason: short, one line, and never a pupil_id."""
        text = values.str.replace(r"[\r\n\t]+", " ", regex=True)
        long = text.str.len() > _SHOWN_VALUE_CHARS
        text = text.where(~long, text.str.slice(0, _SHOWN_VALUE_CHARS) + "...")
        secret = values.isin(rows["pupil_id"]) & (values != "")
        return ("'" + text + "'").where(~secret, "a pupil_id value (are the columns in the wrong order?)")

    def flag(mask: pd.Series, column: str | None, rule: str, reason) -> None:
        """Quarantine the rows in ``mask``; ``reason`` is text or a function giving the reasons."""
        mask = mask.fillna(False).astype(bool)
        if not mask.any():
            return
        if callable(reason):
            reason = reason()
        hit = rows[mask]
        entries.append(
            pd.DataFrame(
                {
                    "line": hit["line"].astype("int64"),
                    "school_urn": None,
                    "intervention": hit["intervention"],
                    "outcome_measure": hit["outcome_measure"],
                    "column_name": column,
                    "rule": rule,
                    "reason": reason[mask] if isinstance(reason, pd.Series) else reason,
                }
            )
        )

    urn = rows["school_urn"]
    bad_urn = ~urn.str.fullmatch(_URN)
    flag(
        bad_urn & (urn == ""),
        "school_urn",
        "school_urn missing",
        "school_urn is empty; fill in the school's 6-digit URN",
    )
    short = urn.str.fullmatch(r"\d{1,5}")
    flag(
        bad_urn & (urn != ""),
        "school_urn",
        "school_urn not 6 digits",
        lambda: "school_urn must be 6 digits, got "
        + shown(urn)
        + np.where(
            short,
            " (a spreadsheet may have dropped leading zeros: format the column as text and re-enter the URN)",
            "; correct it to the school's 6-digit URN",
        ),
    )
    flag(rows["pupil_id"] == "", "pupil_id", "pupil_id missing", "pupil_id is empty; give every pupil the school's own pupil reference")
    flag(rows["intervention"] == "", "intervention", "intervention missing", "intervention is empty; name the intervention the pupil was in")
    flag(
        rows["outcome_measure"] == "",
        "outcome_measure",
        "outcome_measure missing",
        "outcome_measure is empty; name the assessment used as the outcome",
    )
    arm = rows["arm"].str.lower()
    flag(
        ~arm.isin(ARMS),
        "arm",
        "arm not 'intervention' or 'control'",
        lambda: np.where(rows["arm"] == "", "arm is empty; ", "")
        + "arm must be 'intervention' or 'control', got "
        + shown(rows["arm"]).where(rows["arm"] != "", "nothing")
        + "; correct the pupil's randomised arm",
    )
    numbers = {}
    for column in ("outcome", "baseline"):
        value = rows[column]
        is_number = value.str.fullmatch(_NUMBER)
        parsed = pd.to_numeric(value.where(is_number & (value != ""), None), errors="coerce").astype("float64")
        blank_note = " or blank for no post-test" if column == "outcome" else " or blank"
        flag(
            (value != "") & ~is_number,
            column,
            f"{column} not a number",
            lambda: f"{column} must be a number{blank_note}, got " + shown(value) + "; use digits and a decimal point only",
        )
        flag(
            is_number & ~np.isfinite(parsed.to_numpy()),
            column,
            f"{column} not finite",
            lambda: f"{column} must be a finite number, got " + shown(value) + "; correct the score",
        )
        numbers[column] = parsed
    for column, allowed, meaning in (
        ("fsm", ("Y", "N"), "'Y', 'N' or blank"),
        ("send", ("Y", "N"), "'Y', 'N' or blank"),
        ("gender", ("F", "M"), "'F', 'M' or blank"),
    ):
        value = rows[column]
        flag(
            (value != "") & ~value.str.upper().isin(allowed),
            column,
            f"{column} not {meaning}",
            lambda: f"{column} must be {meaning}, got " + shown(value),
        )
    year = rows["year_group"]
    whole = year.str.fullmatch(_WHOLE)
    year_number = pd.to_numeric(year.where(whole, None), errors="coerce")
    flag(
        (year != "") & ~(whole & year_number.between(YEAR_GROUPS.start, YEAR_GROUPS.stop - 1)),
        "year_group",
        "year_group not 0 to 13",
        lambda: "year_group must be a whole number from 0 (Reception) to 13 or blank, got " + shown(year),
    )
    key = ["school_urn", "pupil_id", "intervention", "outcome_measure"]
    keyed = (rows[key] != "").all(axis=1)
    duplicate = keyed & rows.duplicated(key, keep=False)
    if duplicate.any():
        groups = rows[duplicate].groupby(key, sort=False)["line"]
        all_lines = groups.transform(lambda s: ",".join(str(v) for v in s))
        others = pd.Series(
            [
                ", ".join(x for x in lines.split(",") if x != str(line))
                for lines, line in zip(all_lines, rows.loc[duplicate, "line"])
            ],
            index=all_lines.index,
            dtype="str",
        )
        reasons = pd.Series("", index=rows.index, dtype="str")
        reasons[duplicate] = (
            "the same school, pupil, intervention and outcome_measure are also on line " + others
            + "; keep one row per pupil per intervention and outcome_measure"
        )
        flag(duplicate, "pupil_id", "duplicate pupil row", reasons)

    quarantine = pd.concat(entries, ignore_index=True) if entries else _empty_quarantine()
    bad_lines = set(quarantine["line"].tolist())
    good_mask = ~rows["line"].isin(bad_lines)

    schools = sorted(set(urn[~bad_urn].tolist()))
    if len(schools) > 1:
        shown_urns = ", ".join(schools[:5]) + (", ..." if len(schools) > 5 else "")
        raise ExtractRejected(
            f"{extract.file_name}: the file holds rows for {len(schools)} schools (URNs {shown_urns}); "
            "the contract is one file per school per delivery: split it into one file per school"
        )
    school = schools[0] if schools else None
    named = (rows["intervention"] != "") & (rows["outcome_measure"] != "")
    trials = sorted(set(zip(rows.loc[named, "intervention"], rows.loc[named, "outcome_measure"])))

    quarantine["school_urn"] = school
    for column in ("intervention", "outcome_measure"):
        quarantine[column] = quarantine[column].where(quarantine[column].notna() & (quarantine[column] != ""), None)
    quarantine = quarantine.sort_values(["line", "column_name"], na_position="first", kind="stable").reset_index(drop=True)

    good = rows[good_mask]
    typed = pd.DataFrame(
        {
            "school_urn": good["school_urn"],
            "pupil_id": good["pupil_id"],
            "intervention": good["intervention"],
            "outcome_measure": good["outcome_measure"],
            "arm": arm[good_mask],
            "outcome": numbers["outcome"][good_mask],
            "baseline": numbers["baseline"][good_mask],
            "fsm": _yes_no(good["fsm"]),
            "gender": good["gender"].str.upper().where(good["gender"] != "", None),
            "year_group": year_number[good_mask].astype("Int32"),
            "send": _yes_no(good["send"]),
            "line": good["line"].astype("int64"),
        }
    ).reset_index(drop=True)
    rows_read = n + (len(extract.format_errors) if not extract.format_errors.empty else 0)
    return ValidatedExtract(
        extract.file_name,
        extract.delivery_id,
        school,
        trials,
        rows_read,
        typed,
        quarantine,
        extract.columns_dropped,
    )


def _yes_no(values: pd.Series) -> pd.Series:
    upper = values.str.upper()
    return pd.Series(
        pd.array(np.where(upper == "Y", True, False), dtype="boolean"), index=values.index
    ).mask(values == "")
