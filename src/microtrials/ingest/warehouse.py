"""The DuckDB warehouse: connecting, applying the schema, and running the named SQL in `sql/`."""

from __future__ import annotations

import random
import time
from functools import cache
from pathlib import Path

import duckdb
import pandas as pd

from microtrials.errors import MicrotrialsError

SQL_DIR = Path(__file__).resolve().parents[3] / "sql"


@cache
def sql(name: str) -> str:
    """The text of ``sql/<name>.sql``. Queries take bound parameters (``?`` or ``$name``), never formatting."""
    return (SQL_DIR / f"{name}.sql").read_text(encoding="utf-8")


def connect(db_path: Path | str, read_only: bool = False, config: dict | None = None) -> duckdb.DuckDBPyConnection:
    """Open (creating if needed) the warehouse file and make sure every table exists (``config``: DuckDB settings)."""
    path = Path(db_path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path), read_only=read_only, config=dict(config or {}))
    if not read_only:
        con.execute(sql("schema"))
    return con


def is_lock_error(exc: BaseException) -> bool:
    """True for DuckDB's error when another process holds the database file's lock."""
    return isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()


def _is_being_created(exc: BaseException, path: Path) -> bool:
    """True when another process is creating the file right now: DuckDB sees a half-written header."""
    if "not a valid duckdb database file" not in str(exc).lower():
        return False
    try:
        return time.time() - path.stat().st_mtime < 10.0
    except OSError:
        return False


def connect_with_retry(
    db_path: Path | str, timeout_s: float = 60.0, read_only: bool = False, config: dict | None = None
) -> duckdb.DuckDBPyConnection:
    """:func:`connect`, waiting with back-off while another process holds the warehouse.

    DuckDB allows one writing process per file (and a file another process is creating this
    moment reads as invalid for a few milliseconds). If the lock is still held after ``timeout_s``
    seconds, raise :class:`MicrotrialsError` saying so, never the raw lock error.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        try:
            return connect(db_path, read_only=read_only, config=config)
        except duckdb.Error as exc:
            if not (is_lock_error(exc) or _is_being_created(exc, Path(db_path))):
                raise MicrotrialsError(
                    f"could not open the warehouse {db_path}: {exc}; check the path and its permissions"
                ) from exc
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MicrotrialsError(
                    f"another microtrials run holds the warehouse {db_path} (waited {timeout_s:g} s); "
                    "wait for that run to finish, then run again"
                ) from exc
            time.sleep(min(remaining, delay * (0.5 + random.random())))
            delay = min(delay * 2, 2.0)


def rollback(con: duckdb.DuckDBPyConnection) -> None:
    """Roll back the open transaction after an error, never hiding that error: when the transaction
    is already gone (a COMMIT that failed because the disk is full ends it), DuckDB's "cannot
    rollback - no transaction is active" is swallowed so the caller re-raises the real cause."""
    try:
        con.execute("ROLLBACK")
    except duckdb.Error:
        pass


def table_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Whether ``table`` exists (the derived tables appear after their first run)."""
    return con.execute(sql("table_exists"), {"name": table}).fetchall()[0][0] > 0


def save_frame(con: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame) -> None:
    """Replace ``table`` with the rows of ``frame`` (passed through Arrow, never as SQL text).

    ``table`` must be one of the derived tables named in ``DERIVED_TABLES``.
    """
    if table not in DERIVED_TABLES:
        raise ValueError(f"{table!r} is not a derived table")
    con.register("frame_to_save", frame)
    try:
        con.execute("BEGIN TRANSACTION")
        con.execute(sql(f"replace_{table}"))
        con.execute("COMMIT")
    except Exception:
        rollback(con)
        raise
    finally:
        con.unregister("frame_to_save")


# Tables rebuilt whole from a frame on each run.
DERIVED_TABLES = ("load_report", "trial_results", "school_results", "trial_spellings",
                  "exploratory_results", "registry_messages", "registry_progress")
