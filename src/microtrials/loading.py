"""Writing validated school extracts into the warehouse: replace per school and trial, in one transaction.

A school's delivery replaces that school's ``pupils`` rows for exactly the trials the file names
(and the quarantine rows those trials or that file name had), inside one transaction, so a failure
leaves the warehouse as it was. Loading the same file (same name, same bytes) again changes
nothing and reports ``unchanged``. Every file seen gets a ``deliveries`` row, unless that exact
file was already recorded with the same outcome. Data reaches DuckDB only through registered
Arrow tables and bound parameters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa

from microtrials import extracts, warehouse
from microtrials.errors import MicrotrialsError
from microtrials.privacy import pseudonymise

# Files in the extracts folder that look like a spreadsheet a school sent instead of a CSV:
# reported as rejected so the officer knows to ask for a CSV.
NOT_CSV_SUFFIXES = (".xlsx", ".xlsm", ".xls", ".ods", ".tsv", ".txt", ".numbers")
TRANSACTION_ATTEMPTS = 5


@dataclass
class FileReport:
    """What became of one delivered file (no pupil identifiers)."""

    file_name: str
    status: str  # 'loaded' | 'rejected' | 'unchanged'
    school_urn: str | None = None
    trials: list[tuple[str, str]] = field(default_factory=list)
    rows_read: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    columns_dropped: list[str] = field(default_factory=list)
    reason: str | None = None


def trials_text(trials: list[tuple[str, str]]) -> str:
    """Trials as the deliveries table and the report show them: 'intervention / outcome_measure; ...'."""
    return "; ".join(f"{intervention} / {measure}" for intervention, measure in trials)


def load_file(con: duckdb.DuckDBPyConnection, path: Path, key: bytes) -> FileReport:
    """Read, validate and load one school extract; a file that cannot be read is rejected whole."""
    path = Path(path)
    try:
        if path.suffix.lower() in NOT_CSV_SUFFIXES:
            raise extracts.ExtractRejected(
                f"{path.name}: only .csv files are loaded; {extracts.SAVE_AS_CSV}"
            )
        extract = extracts.read_extract(path)
        checked = extracts.validate(extract)
    except extracts.ExtractRejected as exc:
        return _record_rejection(con, path, str(exc))
    report = FileReport(
        file_name=checked.file_name,
        status="loaded",
        school_urn=checked.school_urn,
        trials=checked.trials,
        rows_read=checked.rows_read,
        rows_loaded=len(checked.good),
        rows_quarantined=checked.rows_quarantined,
        quarantined_by_reason=checked.quarantined_by_reason(),
        columns_dropped=list(checked.columns_dropped),
    )
    pupils = _pupil_table(checked.good, key)
    quarantine = _quarantine_table(checked.quarantine)
    trials = pa.table(
        {
            "intervention": pa.array([t[0] for t in checked.trials], type=pa.string()),
            "outcome_measure": pa.array([t[1] for t in checked.trials], type=pa.string()),
        }
    )
    params = {"delivery_id": checked.delivery_id, "file_name": checked.file_name}
    delivery = params | {
        "school_urn": report.school_urn,
        "trials": trials_text(report.trials),
        "rows_read": report.rows_read,
        "rows_loaded": report.rows_loaded,
        "rows_quarantined": report.rows_quarantined,
        "columns_dropped": ", ".join(report.columns_dropped) or None,
        "status": "loaded",
        "reason": None,
    }

    def write(cur: duckdb.DuckDBPyConnection) -> bool:
        seen = cur.execute(warehouse.sql("delivery_seen"), params | {"status": "loaded"}).fetchall()[0][0]
        if seen:
            return False
        cur.register("delivery_pupils", pupils)
        cur.register("delivery_quarantine", quarantine)
        cur.register("delivery_trials", trials)
        try:
            if report.school_urn is not None:
                school = {"school_urn": report.school_urn}
                cur.execute(warehouse.sql("delete_school_trials"), school)
                cur.execute(warehouse.sql("delete_school_quarantine"), school | {"file_name": checked.file_name})
            else:
                cur.execute(
                    "DELETE FROM quarantine WHERE source_file = $file_name", {"file_name": checked.file_name}
                )
            cur.execute(warehouse.sql("load_pupils"), params)
            cur.execute(warehouse.sql("load_quarantine"), params)
            cur.execute(warehouse.sql("load_delivery"), delivery)
        finally:
            for name in ("delivery_pupils", "delivery_quarantine", "delivery_trials"):
                cur.unregister(name)
        return True

    if not _in_transaction(con, write):
        report.status = "unchanged"
    return report


def load_folder(con: duckdb.DuckDBPyConnection, folder: Path, key: bytes) -> list[FileReport]:
    """Load every ``*.csv`` in ``folder`` (sorted by name; a later name wins when two files of one
    school hold the same trial). Spreadsheet files sent instead of CSVs are reported as rejected."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MicrotrialsError(f"extracts folder {folder} does not exist: create it or point the run at another")
    files = sorted(
        (
            p
            for p in folder.iterdir()
            if p.is_file()
            and not p.name.startswith((".", "~$"))
            and p.suffix.lower() in (".csv",) + NOT_CSV_SUFFIXES
        ),
        key=lambda p: p.name,
    )
    return [load_file(con, path, key) for path in files]


def load_report_frame(reports: list[FileReport]) -> pd.DataFrame:
    """One row per file, ready for load_report.csv; holds no pupil identifiers."""
    columns = [
        "file_name",
        "status",
        "school_urn",
        "trials",
        "rows_read",
        "rows_loaded",
        "rows_quarantined",
        "quarantined_by_reason",
        "columns_dropped",
        "reason",
    ]
    rows = [
        {
            "file_name": r.file_name,
            "status": r.status,
            "school_urn": r.school_urn or "",
            "trials": trials_text(r.trials),
            "rows_read": r.rows_read,
            "rows_loaded": r.rows_loaded,
            "rows_quarantined": r.rows_quarantined,
            "quarantined_by_reason": "; ".join(f"{k}: {v}" for k, v in r.quarantined_by_reason.items()),
            "columns_dropped": ", ".join(r.columns_dropped),
            "reason": r.reason or "",
        }
        for r in reports
    ]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.astype(
        {
            "file_name": "str",
            "status": "str",
            "school_urn": "str",
            "trials": "str",
            "rows_read": "int64",
            "rows_loaded": "int64",
            "rows_quarantined": "int64",
            "quarantined_by_reason": "str",
            "columns_dropped": "str",
            "reason": "str",
        }
    )


# ---------------------------------------------------------------------------------------------


def _record_rejection(con: duckdb.DuckDBPyConnection, path: Path, reason: str) -> FileReport:
    """Record a rejected file in ``deliveries`` (once per exact file); nothing else changes."""
    try:
        import hashlib

        delivery_id = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        delivery_id = "unreadable"
    params = {"delivery_id": delivery_id, "file_name": path.name}

    def write(cur: duckdb.DuckDBPyConnection) -> bool:
        seen = cur.execute(warehouse.sql("delivery_seen"), params | {"status": "rejected"}).fetchall()[0][0]
        if not seen:
            cur.execute(
                warehouse.sql("load_delivery"),
                params
                | {
                    "school_urn": None,
                    "trials": None,
                    "rows_read": 0,
                    "rows_loaded": 0,
                    "rows_quarantined": 0,
                    "columns_dropped": None,
                    "status": "rejected",
                    "reason": reason,
                },
            )
        return True

    _in_transaction(con, write)
    return FileReport(file_name=path.name, status="rejected", reason=reason)


def _in_transaction(con: duckdb.DuckDBPyConnection, work) -> bool:
    """Run ``work(con)`` in one transaction, retrying a write-write conflict with back-off."""
    delay = 0.05
    for attempt in range(TRANSACTION_ATTEMPTS):
        con.execute("BEGIN TRANSACTION")
        try:
            result = work(con)
            con.execute("COMMIT")
            return result
        except duckdb.TransactionException:
            con.execute("ROLLBACK")
            if attempt == TRANSACTION_ATTEMPTS - 1:
                raise MicrotrialsError(
                    "another connection kept changing the same warehouse rows; run the load again"
                ) from None
            time.sleep(delay)
            delay *= 2
        except BaseException:
            con.execute("ROLLBACK")
            raise
    raise AssertionError("unreachable")


def _pupil_table(good: pd.DataFrame, key: bytes) -> pa.Table:
    """The rows to insert, pupil_id replaced by its keyed hash (the raw id goes no further)."""
    return pa.table(
        {
            "school_urn": pa.array(good["school_urn"].tolist(), type=pa.string()),
            "pupil_key": pa.array(pseudonymise(good["pupil_id"], key).tolist(), type=pa.string()),
            "intervention": pa.array(good["intervention"].tolist(), type=pa.string()),
            "outcome_measure": pa.array(good["outcome_measure"].tolist(), type=pa.string()),
            "arm": pa.array(good["arm"].tolist(), type=pa.string()),
            "outcome": pa.array(good["outcome"].to_numpy(dtype="float64", na_value=float("nan")), from_pandas=True),
            "baseline": pa.array(good["baseline"].to_numpy(dtype="float64", na_value=float("nan")), from_pandas=True),
            "fsm": pa.array(good["fsm"], type=pa.bool_(), from_pandas=True),
            "gender": pa.array(good["gender"].tolist(), type=pa.string(), from_pandas=True),
            "year_group": pa.array(good["year_group"], type=pa.int32(), from_pandas=True),
            "send": pa.array(good["send"], type=pa.bool_(), from_pandas=True),
            "line": pa.array(good["line"].to_numpy(dtype="int64"), type=pa.int64()),
        }
    )


def _quarantine_table(quarantine: pd.DataFrame) -> pa.Table:
    def text(column: str) -> pa.Array:
        values = quarantine[column].astype(object).where(quarantine[column].notna(), None).tolist()
        return pa.array(values, type=pa.string())

    return pa.table(
        {
            "line": pa.array(quarantine["line"].to_numpy(dtype="int64"), type=pa.int64()),
            "school_urn": text("school_urn"),
            "intervention": text("intervention"),
            "outcome_measure": text("outcome_measure"),
            "column_name": text("column_name"),
            "rule": text("rule"),
            "reason": text("reason"),
        }
    )
