"""Private "what to fix" files for schools: the current delivery's problems, one CSV each (docs/loading.md, "Feedback")."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from microtrials.ingest import extracts
from microtrials.publish import publish
from microtrials.ingest import warehouse
from microtrials.errors import MicrotrialsError

COLUMNS = ["line", "column", "value", "reason", "what_to_do"]
HEADERS = {
    "line": "Line",
    "column": "Column",
    "value": "Value sent",
    "reason": "What is wrong",
    "what_to_do": "What to do",
}
HIDDEN = "(not shown: it could identify a pupil)"
NO_URN = "unknown-urn"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_GENERAL_FIX = "correct the value in your file and send the whole file again"


def feedback_path(folder: Path, school_urn: str | None, file_name: str) -> Path:
    """Where a delivery's feedback goes: ``<folder>/<urn>/<file stem>-what-to-fix.csv``."""
    stem = _UNSAFE.sub("_", Path(file_name).stem).strip("_") or "file"
    urn = school_urn if school_urn and re.fullmatch(r"[0-9]{6}", school_urn) else NO_URN
    return Path(folder) / urn / f"{stem}-what-to-fix.csv"


def check_private(folder: Path, published: Path | None) -> None:
    """Raise :class:`MicrotrialsError` when ``folder`` is, or is inside, the published folder."""
    if published is None:
        return
    folder, published = Path(folder).resolve(), Path(published).resolve()
    if folder == published or folder.is_relative_to(published) or published.is_relative_to(folder):
        raise MicrotrialsError(
            f"the feedback folder {folder} overlaps the published folder {published}: feedback files name "
            "schools' problem rows and must stay private; set MICROTRIALS_FEEDBACK to a folder outside it"
        )


def write_feedback(
    con: duckdb.DuckDBPyConnection,
    reports: Iterable,
    paths: dict[str, Path],
    folder: Path,
    published: Path | None = None,
) -> list[Path]:
    """Write the feedback file of every report (``microtrials.ingest.loading.FileReport``) that was loaded
    or rejected in this run and has rows set aside, warnings, or trials it did not replace; remove
    an earlier feedback file of the same name when the new delivery has nothing to fix. An
    ``unchanged`` delivery's file is written again when it is missing (a run killed after loading).

    ``paths`` maps file names to the delivered files (read again for the values shown).
    Returns the files written.
    """
    check_private(folder, published)
    todo = [(report, feedback_path(folder, _school(report, paths), report.file_name))
            for report in reports if report.file_name in paths]
    todo = [(report, target) for report, target in todo if _wanted(report, target)]
    _archive_earlier(folder, todo)
    ids = {r.file_name: _delivery_id(paths[r.file_name]) for r, _ in todo}
    problems = _problems(con, ids)
    written = []
    for report, target in todo:
        path = paths[report.file_name]
        rows = _rows(problems.get((ids[report.file_name], report.file_name)), report, path)
        if rows.empty:
            if target.exists():
                target.unlink()
            continue
        frame = publish.neutralise_formulas(rows[COLUMNS]).rename(columns=HEADERS)
        text = frame.to_csv(index=False, lineterminator="\r\n")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            publish.write_atomic(target, "\ufeff" + text, sync=False)  # one sync for all, below
        except OSError as exc:
            raise MicrotrialsError(
                f"could not write the feedback file {target} ({exc.strerror}); check that the feedback folder "
                "is writable (MICROTRIALS_FEEDBACK), then run again: the rows are loaded already"
            ) from exc
        written.append(target)
    if written and hasattr(os, "sync"):
        os.sync()  # one flush for every file written, not two fsyncs per file (seconds per 1,000 schools)
    return written


def _school(report, paths: dict[str, Path]) -> str | None:
    """The school a report's feedback goes to: its URN (for a file rejected whole, the loader gives
    the one valid URN every row carries, so the school still gets told why; a report made elsewhere
    without it is read here the same way)."""
    if report.school_urn or report.status != "rejected":
        return report.school_urn
    return extracts.only_urn(paths[report.file_name])


def _wanted(report, target: Path) -> bool:
    """Whether this run writes (or removes) a report's feedback file: a delivery loaded or rejected
    now; an ``unchanged`` one only to drop a stale file or write a missing one (a run killed after
    loading never wrote it)."""
    if report.status in ("loaded", "rejected", "held", "partly held"):
        return True
    if report.status != "unchanged":
        return False
    clean = not (
        report.rows_quarantined
        or getattr(report, "rows_with_warnings", 0)
        or report.trials_rejected
        or getattr(report, "trials_held", None)
        or getattr(report, "quarantined_by_reason", None)
        or getattr(report, "file_warnings", None)
        or report.columns_dropped
    )
    if clean and target.exists():
        target.unlink()
    return not clean and not target.exists()


ARCHIVE = "archive"


def _archive_earlier(folder: Path, todo: list) -> None:
    """Move the feedback files of a school's earlier deliveries into ``<urn>/archive/`` when the
    school sent a new delivery this run, so only the current delivery's files stay in its folder."""
    current: dict[Path, set[Path]] = {}
    for report, target in todo:
        if report.status != "unchanged":
            current.setdefault(target.parent, set()).add(target)
    for school, keep in current.items():
        for old in school.glob("*-what-to-fix.csv") if school.is_dir() else []:
            if old not in keep:
                (school / ARCHIVE).mkdir(exist_ok=True)
                os.replace(old, school / ARCHIVE / old.name)


def _problems(con: duckdb.DuckDBPyConnection, ids: dict[str, str]) -> dict[tuple[str, str], pd.DataFrame]:
    """(delivery_id, file name) -> its quarantine entries and warnings (line, column_name, reason),
    for every file in ``ids`` (file name -> delivery_id) in one query per table, not one per file."""
    if not ids:
        return {}
    wanted = sorted(set(ids.values()))
    parts = [con.execute(warehouse.sql("feedback_quarantine_many"), {"ids": wanted}).df()]
    if warehouse.table_exists(con, "load_warnings"):
        parts.append(con.execute(warehouse.sql("feedback_warnings_many"), {"ids": wanted}).df())
    parts = [p for p in parts if len(p)]
    if not parts:
        return {}
    frame = pd.concat(parts, ignore_index=True)
    return {(str(d), str(f)): group[["line", "column_name", "reason"]].reset_index(drop=True)
            for (d, f), group in frame.groupby(["delivery_id", "source_file"], sort=False)}


def _rows(problems: pd.DataFrame | None, report, path: Path) -> pd.DataFrame:
    """The report's problems, one row each: quarantine entries, warnings, trials not replaced."""
    out = []
    if problems is not None:
        wanted = {(int(line), column) for line, column in zip(problems["line"], problems["column_name"])
                  if not pd.isna(line) and isinstance(column, str)}
        kept = getattr(report, "problem_cells", None)  # what the load kept; else read the file again
        values, pupil_ids = kept[:2] if kept is not None and wanted <= kept[2] else _cells(path, wanted)
        ordered = problems.sort_values(["line", "column_name"], na_position="first")
        columns = [c if isinstance(c, str) else "" for c in ordered["column_name"]]
        lines_of = ["" if pd.isna(line) else int(line) for line in ordered["line"]]
        shown = _shown_values([values.get(key, "") for key in zip(lines_of, columns)], columns, pupil_ids)
        for line, column, value, why in zip(lines_of, columns, shown, ordered["reason"]):
            reason, fix = _split(why)
            out.append({"line": line, "column": column, "value": value, "reason": reason, "what_to_do": fix})
    for trial, why in [*getattr(report, "trials_rejected", {}).items(), *getattr(report, "trials_held", {}).items()]:
        reason, fix = _split(why)
        out.append({"line": "", "column": "", "value": "", "reason": f"{trial}: {reason}", "what_to_do": fix})
    if report.status == "rejected" and report.reason and not report.trials_rejected and problems is None:
        reason, fix = _split(report.reason.removeprefix(f"{report.file_name}: "))
        out.append({"line": "", "column": "", "value": "", "reason": f"the file was not loaded: {reason}",
                    "what_to_do": fix})
    if report.columns_dropped:
        out.append({"line": "", "column": ", ".join(report.columns_dropped), "value": "",
                    "reason": "the file has columns the trial does not use; they were dropped when the file was read "
                    "and never stored (they may hold personal data, such as pupils' names)",
                    "what_to_do": "please stop sending them: send only the columns of the extract format"})
    return pd.DataFrame(out, columns=COLUMNS)


def _shown_values(values: list, columns: list[str], pupil_ids: set[str]) -> list[str]:
    """Each cell as the feedback file shows it: the value sent when the identifier rule of
    :func:`microtrials.ingest.extracts.quotable` allows it, else :data:`HIDDEN` (blank stays blank).
    One rule check per column over all its cells, so a file with many rows set aside costs time in
    proportion to its rows (a check per cell built the file's pupil_id set once per cell)."""
    ids = pa.array(sorted(pupil_ids), type=pa.string())
    shown = [str(v) if v else "" for v in values]
    cells: dict[str, list[int]] = {}
    for i, (column, value) in enumerate(zip(columns, shown)):
        if value:
            cells.setdefault(column, []).append(i)
    for column, at in cells.items():
        safe = extracts.quotable(column, pa.array([shown[i] for i in at], type=pa.string()), ids).to_pylist()
        for i, ok in zip(at, safe):
            if not ok:
                shown[i] = HIDDEN
    return shown


def _split(reason: str) -> tuple[str, str]:
    """'what is wrong; what to do' -> the two parts (a reason without a ';' gets a general fix)."""
    head, sep, tail = str(reason).partition("; ")
    return (head, tail) if sep else (head, _GENERAL_FIX)


def _delivery_id(path: Path) -> str:
    import hashlib

    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return ""


def _cells(path: Path, wanted: set[tuple[int, str]]) -> tuple[dict[tuple[int, str], str], set[str]]:
    """``problem_cells`` of the delivered file read again (when the load did not keep them)."""
    try:
        rows = extracts.read_extract(path).rows
    except (extracts.ExtractRejected, OSError, ValueError):  # values unknown: the reasons still say what is wrong
        return {}, set()
    return problem_cells(rows, wanted)


def problem_cells(rows: pa.Table, wanted: set[tuple[int, str]]) -> tuple[dict[tuple[int, str], str], set[str]]:
    """(line, column) -> the cell as sent, for the (line, column) pairs ``wanted`` of an extract's rows
    (``extracts.Extract.rows``); and which of those cells' values are a pupil_id of the file (never
    shown). The loader keeps this for each file it reads (``FileReport.problem_cells``, in memory
    only), so the feedback files need not read every file again; only the cells a quarantine entry
    or warning names are kept (every cell of 200,000 rows set aside took 0.4 GB)."""
    if not wanted or "line" not in rows.column_names:
        return {}, set()
    line_type = rows.schema.field("line").type
    by_column: dict[str, list[int]] = {}
    for line, column in wanted:
        by_column.setdefault(column, []).append(line)
    cells = {}
    for column, lines in by_column.items():
        if column == "line" or column not in rows.column_names:
            continue
        these = rows.filter(pc.is_in(rows.column("line"), value_set=pa.array(sorted(lines), type=line_type)))
        for line, value in zip(these.column("line").to_pylist(), these.column(column).to_pylist()):
            cells[int(line), column] = value
    if "pupil_id" not in rows.column_names:
        return cells, set()
    pupil_ids = set(rows.column("pupil_id").to_pylist()) - {"", None}
    return cells, {v for v in cells.values() if v in pupil_ids}
