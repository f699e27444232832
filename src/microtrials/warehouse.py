"""The DuckDB warehouse: connecting, applying the schema, and running the named SQL in `sql/`."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import duckdb

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"


@cache
def sql(name: str) -> str:
    """The text of ``sql/<name>.sql``. Queries take bound parameters (``?`` or ``$name``), never formatting."""
    return (SQL_DIR / f"{name}.sql").read_text(encoding="utf-8")


def connect(db_path: Path | str, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open (creating if needed) the warehouse file and make sure every table exists."""
    path = Path(db_path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path), read_only=read_only)
    if not read_only:
        con.execute(sql("schema"))
    return con
