"""Writing validated school extracts into the warehouse: replace per school and trial, in one transaction.

A school's delivery replaces that school's ``pupils`` rows for exactly the trials the file names
(and the quarantine rows those trials or that file name had), inside one transaction, so a failure
leaves the warehouse as it was. Loading the same file (same name, same bytes) again changes
nothing and reports ``unchanged``. Every file seen gets a ``deliveries`` row, unless that exact
file was already recorded with the same outcome. Data reaches DuckDB only through registered
Arrow tables and bound parameters.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa

from microtrials import extracts, warehouse
from microtrials.errors import MicrotrialsError
from microtrials.privacy import pseudonymise

# Files in the extracts folder that look like a spreadsheet a school sent instead of a CSV:
# reported as rejected so the officer knows to ask for a CSV.
NOT_CSV_SUFFIXES = (".xlsx", ".xlsm", ".xls", ".ods", ".tsv", ".numbers")
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
    """Read, validate and load one school extract; a file that cannot be read is rejected whole.

    A file already loaded (same name, same bytes) is not read again: its stored report comes back
    with status ``unchanged`` and nothing changes.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        return _record_rejection(con, path.name, "unreadable", f"{path.name}: could not be opened ({exc.strerror}); "
                                 "check the file is readable")
    delivery_id = hashlib.sha256(data).hexdigest()
    earlier = _earlier_report(con, delivery_id, path.name)
    if earlier is not None:
        return earlier
    try:
        if path.suffix.lower() in NOT_CSV_SUFFIXES:
            raise extracts.ExtractRejected(f"{path.name}: only .csv files are loaded; {extracts.SAVE_AS_CSV}")
        checked = extracts.validate(extracts.read_extract(path, data))
    except extracts.ExtractRejected as exc:
        return _record_rejection(con, path.name, delivery_id, str(exc))
    report = FileReport(
        file_name=checked.file_name,
        status="loaded",
        school_urn=checked.school_urn,
        trials=checked.trials,
        rows_read=checked.rows_read,
        rows_loaded=checked.good.num_rows,
        rows_quarantined=checked.rows_quarantined,
        quarantined_by_reason=checked.quarantined_by_reason(),
        columns_dropped=list(checked.columns_dropped),
    )
    frames = {
        "delivery_pupils": _pupil_table(checked.good, key),
        "delivery_quarantine": checked.quarantine,
        "delivery_trials": pa.table(
            {
                "intervention": pa.array([t[0] for t in checked.trials], type=pa.string()),
                "outcome_measure": pa.array([t[1] for t in checked.trials], type=pa.string()),
            }
        ),
    }
    params = {"delivery_id": delivery_id, "file_name": checked.file_name}
    school = {"school_urn": report.school_urn}  # None (no valid URN): no pupil rows to replace

    def write(cur: duckdb.DuckDBPyConnection) -> bool:
        if _seen(cur, delivery_id, checked.file_name, "loaded"):  # another connection got there first
            return False
        cur.execute(warehouse.sql("delete_school_trials"), school)
        cur.execute(warehouse.sql("delete_school_quarantine"), school | {"file_name": checked.file_name})
        cur.execute(warehouse.sql("load_pupils"), params)
        cur.execute(warehouse.sql("load_quarantine"), params)
        cur.execute(warehouse.sql("load_delivery"), _delivery_row(delivery_id, report))
        return True

    if not _in_transaction(con, write, frames):
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


def _seen(con: duckdb.DuckDBPyConnection, delivery_id: str, file_name: str, status: str) -> bool:
    params = {"delivery_id": delivery_id, "file_name": file_name, "status": status}
    return bool(con.execute(warehouse.sql("delivery_seen"), params).fetchall()[0][0])


def _earlier_report(con: duckdb.DuckDBPyConnection, delivery_id: str, file_name: str) -> FileReport | None:
    """The stored report of this exact file (same name and bytes), if it was loaded before.

    (A rejected file is read again each time, so a fix in the rules reaches it; it is recorded once.)
    """
    found = con.execute(
        warehouse.sql("delivery_report"), {"delivery_id": delivery_id, "file_name": file_name}
    ).fetchall()
    if not found or found[0][1] is None:
        return None
    fields = json.loads(found[0][1])
    fields["trials"] = [tuple(t) for t in fields["trials"]]
    return FileReport(**(fields | {"status": "unchanged"}))


def _delivery_row(delivery_id: str, report: FileReport) -> dict:
    """The deliveries row for a report (its JSON lets an unchanged re-run report without re-reading)."""
    return {
        "delivery_id": delivery_id,
        "file_name": report.file_name,
        "school_urn": report.school_urn,
        "trials": trials_text(report.trials) or None,
        "rows_read": report.rows_read,
        "rows_loaded": report.rows_loaded,
        "rows_quarantined": report.rows_quarantined,
        "columns_dropped": ", ".join(report.columns_dropped) or None,
        "status": report.status,
        "reason": report.reason,
        "report_json": json.dumps(asdict(report), ensure_ascii=False),
    }


def _record_rejection(con: duckdb.DuckDBPyConnection, file_name: str, delivery_id: str, reason: str) -> FileReport:
    """Record a rejected file in ``deliveries`` (once per exact file); nothing else changes."""
    report = FileReport(file_name=file_name, status="rejected", reason=reason)

    def write(cur: duckdb.DuckDBPyConnection) -> bool:
        if not _seen(cur, delivery_id, file_name, "rejected"):
            cur.execute(warehouse.sql("load_delivery"), _delivery_row(delivery_id, report))
        return True

    _in_transaction(con, write)
    return report


def _in_transaction(con: duckdb.DuckDBPyConnection, work, frames: dict[str, pa.Table] | None = None) -> bool:
    """Run ``work(con)`` in one transaction, with ``frames`` registered as views for its SQL.

    A write-write conflict with another connection of this process is retried with back-off;
    any other error rolls back and is raised as it is.
    """
    frames = frames or {}
    delay = 0.05
    for attempt in range(TRANSACTION_ATTEMPTS):
        for name, frame in frames.items():
            con.register(name, frame)
        try:
            con.execute("BEGIN TRANSACTION")
            try:
                result = work(con)
                con.execute("COMMIT")
                return result
            except BaseException as exc:
                con.execute("ROLLBACK")
                if not (isinstance(exc, duckdb.TransactionException) and "conflict" in str(exc).lower()):
                    raise
                if attempt == TRANSACTION_ATTEMPTS - 1:
                    raise MicrotrialsError(
                        "another connection kept changing the same warehouse rows; run the load again"
                    ) from exc
        finally:
            for name in frames:
                con.unregister(name)
        time.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")


def _pupil_table(good: pa.Table, key: bytes) -> pa.Table:
    """The rows to insert, pupil_id replaced by its keyed hash (the raw id goes no further)."""
    keys = pseudonymise(good.column("pupil_id"), key)
    return good.set_column(good.schema.get_field_index("pupil_id"), "pupil_key", keys)
