"""Writing validated school extracts into the warehouse: replace per school and trial, in one transaction.

A school's delivery replaces that school's ``pupils`` rows for exactly the trials the file names
(and the quarantine rows those trials or that file name had), inside one transaction, so a failure
leaves the warehouse as it was. Loading the same file (same name, same bytes) again changes
nothing and reports ``unchanged``. Every file seen gets a ``deliveries`` row, unless that exact
file was already recorded with the same outcome. Data reaches DuckDB only through registered
Arrow tables and bound parameters.

For speed at national scale (:func:`load_files`), several files' replaces share one transaction and
one INSERT per table: files for distinct schools only, so each file's delete + insert means what it
would alone; if a shared transaction fails it is rolled back and its files are written one by one.
A long list of files is read and validated by worker processes while this process writes; the
workers die with this process (Linux ``PR_SET_PDEATHSIG``), even when it is killed.

A re-delivery only replaces what it can replace: when a school's new file brings no loadable rows
for a trial it names, or fewer than half the rows the school has for that trial, the earlier rows
stay and the file is reported as rejected for that trial, with the reason (``trials_rejected``).

Before anything is written, the pupil key is compared with the fingerprint the warehouse holds
(:func:`microtrials.ingest.privacy.check_key_unchanged`).
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from microtrials.ingest import change_sets
from microtrials.ingest import extracts
from microtrials.ingest import feedback
from microtrials.ingest import plausibility
from microtrials.ingest import warehouse
from microtrials.errors import MicrotrialsError
from microtrials.ingest import trial_key
from microtrials.ingest.privacy import check_key_unchanged, pseudonymise

# Files in the extracts folder that look like a spreadsheet a school sent instead of a CSV:
# reported as rejected so the officer knows to ask for a CSV. (A .xlsx workbook is read:
# extracts.WORKBOOK_SUFFIXES.)
NOT_CSV_SUFFIXES = (".xlsm", ".xls", ".ods", ".tsv", ".numbers")
TRANSACTION_ATTEMPTS = 5
# Files read and checked before their writes; the group of them for distinct schools shares a transaction.
BATCH_FILES = 200
# From this many files on, worker processes read and validate while this one writes.
PARALLEL_MIN_FILES = 400


@dataclass
class FileReport:
    """What became of one delivered file (no pupil identifiers)."""

    file_name: str
    status: str  # 'loaded' | 'held' | 'partly held' | 'rejected' | 'unchanged' | 'ignored'
    school_urn: str | None = None
    trials: list[tuple[str, str]] = field(default_factory=list)
    rows_read: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    quarantined_by_reason: dict[str, int] = field(default_factory=dict)
    columns_dropped: list[str] = field(default_factory=list)
    reason: str | None = None
    # 'intervention / outcome_measure' -> why this file did not replace the school's earlier rows
    trials_rejected: dict[str, str] = field(default_factory=dict)
    rows_with_warnings: int = 0  # loaded rows with a value blanked or an outcome kept as no post-test
    warned_by_reason: dict[str, int] = field(default_factory=dict)
    file_warnings: list[str] = field(default_factory=list)  # e.g. read as Windows-1252
    # what the file did, one plain line per (school, trial, round) change set (microtrials.ingest.change_sets)
    changes: list[str] = field(default_factory=list)
    # 'intervention / outcome_measure / round' -> why its change set was held, as the school reads it
    trials_held: dict[str, str] = field(default_factory=dict)
    # loaded rows whose outcome was set aside in quarantine (blanked; the pupil stays randomised): part
    # of the rows in quarantine, never of ``rows_quarantined`` (rows kept out)
    outcomes_set_aside: int = 0


def trials_text(trials: list[tuple[str, str]]) -> str:
    """Trials as the deliveries table and the report show them: 'intervention / outcome_measure; ...'."""
    return "; ".join(f"{intervention} / {measure}" for intervention, measure in trials)


def load_file(con: duckdb.DuckDBPyConnection, path: Path, key: bytes, new_pupil_key: bool = False) -> FileReport:
    """Read, validate and load one school extract; a file that cannot be read is rejected whole.

    A file already loaded (same name, same bytes) is not read again: its stored report comes back
    with status ``unchanged`` and nothing changes.
    """
    return load_files(con, [path], key, new_pupil_key)[0]


def load_folder(
    con: duckdb.DuckDBPyConnection, folder: Path, key: bytes, new_pupil_key: bool = False
) -> list[FileReport]:
    """Load every ``*.csv`` and ``*.xlsx`` in ``folder`` (sorted by name; a later name wins when two
    files of one school hold the same trial). Other spreadsheet files are reported as rejected;
    every other entry (folders, other files, hidden files) as ``ignored``, with why."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MicrotrialsError(f"extracts folder {folder} does not exist: create it or point the run at another")
    reports = load_files(con, extract_files(folder), key, new_pupil_key) + ignored_entries(folder)
    return sorted(reports, key=lambda r: r.file_name)


# Why an entry of the extracts folder is not a file to load, as the load report says it.
IGNORED_FOLDER = "a folder: files inside folders are not loaded; move the school's file into the extracts folder itself"
IGNORED_HIDDEN = (
    "a hidden file (its name starts with '.'): not loaded; if it is a school's extract, rename it without the dot"
)
IGNORED_LOCK = "an Office lock file (~$...): Excel has the workbook open; close Excel, it goes away by itself"
IGNORED_OTHER = "not an extract file: only .csv and .xlsx files are loaded; " + extracts.SAVE_AS_CSV
IGNORED_SPECIAL = "not a regular file (a link to nowhere, a device or a pipe): not loaded"


def ignored_entries(folder: Path) -> list[FileReport]:
    """Every entry of ``folder`` that :func:`extract_files` leaves out, as an ``ignored`` report saying why."""
    folder = Path(folder)
    considered = {p.name for p in extract_files(folder)}
    reports = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name in considered:
            continue
        if entry.name.startswith("~$"):
            reason = IGNORED_LOCK
        elif entry.name.startswith("."):
            reason = IGNORED_HIDDEN
        elif entry.is_dir():
            reason = IGNORED_FOLDER
        elif entry.is_file():
            reason = IGNORED_OTHER
        else:
            reason = IGNORED_SPECIAL
        reports.append(FileReport(file_name=entry.name, status="ignored", reason=f"{entry.name}: {reason}"))
    return reports


def extract_files(folder: Path) -> list[Path]:
    """The files a load of ``folder`` considers, sorted by name: ``*.csv``, ``*.xlsx`` and the
    spreadsheet formats reported as rejected; hidden files and Office lock files (``~$...``) are skipped."""
    return sorted(
        (
            p
            for p in Path(folder).iterdir()
            if p.is_file()
            and not p.name.startswith((".", "~$"))
            and p.suffix.lower() in (".csv",) + extracts.WORKBOOK_SUFFIXES + NOT_CSV_SUFFIXES
        ),
        key=lambda p: p.name,
    )


def load_files(
    con: duckdb.DuckDBPyConnection, paths: list[Path], key: bytes, new_pupil_key: bool = False, accept: bool = False,
    keys: trial_key.TrialKeys | None = None, run_id: str | None = None,
) -> list[FileReport]:
    """Load ``paths`` in the order given, as :func:`load_file` would one by one, but faster.

    First the key is checked against the warehouse's fingerprint (a different key raises
    :class:`MicrotrialsError` unless ``new_pupil_key``).

    Files go in chunks of ``BATCH_FILES``: one query finds the chunk's unchanged files, the rest are
    read and validated (by worker processes for a long list, the next chunk's while this one's is
    written), and their writes share one transaction per group of files for distinct schools (so a
    later file of a school still replaces an earlier one, in a later transaction). If a shared
    transaction fails, it is rolled back and each file of it is written in its own.

    With ``accept`` (the officer's ``microtrials accept FILE``), each file is read again even if
    recorded, and only the change sets the hold rule would hold are applied (``accepted``).
    ``keys`` places the rows in trials and rounds (the registry the run reads); by default, the
    registry last stored in the warehouse (:func:`microtrials.ingest.trial_key.from_warehouse`).
    ``run_id``: the Dagster run loading them, recorded with each change set.
    """
    how = _How(accept, keys, run_id)
    check_key_unchanged(con, key, new_pupil_key)
    paths = [Path(p) for p in paths]
    chunks = [paths[first : first + BATCH_FILES] for first in range(0, len(paths), BATCH_FILES)]
    reports: list[FileReport] = []
    with _workers(len(paths)) as pool:
        staged = None
        for chunk in chunks:
            # Staging looks up only this chunk's files, which the previous chunk's writes never name.
            next_staged = _stage(con, chunk, key, pool, accept)
            if staged is not None:
                reports += _finish(con, staged, how)
            staged = next_staged
        if staged is not None:
            reports += _finish(con, staged, how)
    return reports


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
        "rows_with_warnings",
        "warnings",
        "columns_dropped",
        "reason",
        "changes",
        "outcomes_set_aside",
        "file_warnings",
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
            "rows_with_warnings": r.rows_with_warnings,
            "warnings": "; ".join(r.file_warnings + [f"{k}: {v}" for k, v in r.warned_by_reason.items()]),
            "columns_dropped": ", ".join(r.columns_dropped),
            "reason": r.reason or "",
            "changes": "\n".join(r.changes),
            "outcomes_set_aside": r.outcomes_set_aside,
            "file_warnings": "; ".join(r.file_warnings),
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
            "rows_with_warnings": "int64",
            "warnings": "str",
            "columns_dropped": "str",
            "reason": "str",
            "changes": "str",
            "outcomes_set_aside": "int64",
            "file_warnings": "str",
        }
    )


# ---------------------------------------------------------------------------------------------


@dataclass
class _Delivery:
    """One file read and checked, ready to write: its report and (when loaded) the rows to insert."""

    delivery_id: str
    report: FileReport
    pupils: pa.Table | None = None  # pseudonymised, with source_file and delivery_id
    quarantine: pa.Table | None = None  # with source_file and delivery_id
    warnings: pa.Table | None = None  # with source_file and delivery_id


@dataclass(frozen=True)
class _How:
    """How a load applies its change sets: as the officer's ``accept``, and through which trial keys
    (None: the registry last stored in the warehouse)."""

    accept: bool = False
    keys: trial_key.TrialKeys | None = None
    run_id: str | None = None  # the Dagster run loading, recorded with each change set


@dataclass
class _Staged:
    """A chunk of files on its way: the unchanged ones' stored reports, the others being prepared."""

    paths: list[Path]
    earlier: dict[Path, FileReport]
    prepared: Iterator[_Delivery]  # in the order of the paths not in ``earlier``


@contextmanager
def _workers(files: int):
    """Worker processes for reading and validating a long list of files; None (work here) otherwise.

    Workers are forked (Linux), so they never re-run the caller's script as ``spawn`` would (a
    script without an ``if __name__ == "__main__"`` guard would load again in every worker). They
    only read, validate and hash: the warehouse is written by this process alone. Where fork is
    not the platform's way (macOS, Windows) the files are prepared here, one after another.
    """
    workers = min(os.cpu_count() or 1, 4)
    if files < PARALLEL_MIN_FILES or workers < 2 or not sys.platform.startswith("linux"):
        yield None
        return
    with ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_die_with_parent,
        initargs=(os.getpid(),),
    ) as pool:
        yield pool


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent: int) -> None:
    """In a worker: ask Linux to SIGKILL this process when its parent dies (a ``kill -9`` of the
    run, a crash), so no worker outlives the load; exit at once if the parent is already gone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: the pool's own shutdown still ends the workers
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _stage(con: duckdb.DuckDBPyConnection, paths: list[Path], key: bytes, pool, accept: bool = False) -> _Staged:
    """Read a chunk's bytes, find its unchanged (or still held) files (one query) and start preparing
    the rest (every file, to ``accept``)."""
    contents = {path: _read_bytes(path) for path in paths}
    ids = {path: hashlib.sha256(data).hexdigest() for path, data in contents.items() if isinstance(data, bytes)}
    ids |= {path: data.delivery_id for path, data in contents.items() if isinstance(data, extracts.FileTooLarge)}
    reports = _earlier_reports(con, [(ids[p], p.name) for p in paths if p in ids])
    if accept:  # a held file is read again to be applied; one applied is unchanged, unless since withdrawn
        withdrawn = change_sets.sent_before_withdrawal(con, [d for d, _ in reports])
        reports = {k: r for k, r in reports.items() if r.status == "unchanged" and k[0] not in withdrawn}
    earlier = {p: reports[ids[p], p.name] for p in paths if (ids.get(p), p.name) in reports}
    jobs = [(p, contents[p], ids.get(p, "unreadable"), key) for p in paths if p not in earlier]
    prepared = pool.map(_prepare_job, jobs, chunksize=25) if pool else map(_prepare_job, jobs)
    return _Staged(paths, earlier, prepared)


def _finish(con: duckdb.DuckDBPyConnection, staged: _Staged, how: _How) -> list[FileReport]:
    """Write a staged chunk's prepared files; their reports (and the unchanged ones') in path order."""
    todo = [p for p in staged.paths if p not in staged.earlier]
    prepared = dict(zip(todo, staged.prepared))
    _judge_against_trials(con, list(prepared.values()))
    for delivery in prepared.values():
        _list_first_lines(delivery)
    for group in _groups_of_distinct_schools(list(prepared.values())):
        _write_group(con, group, how)
    return [prepared[p].report if p in prepared else staged.earlier[p] for p in staged.paths]


def _judge_against_trials(con: duckdb.DuckDBPyConnection, deliveries: list[_Delivery]) -> None:
    """Judge the batch's loaded files' scores against their whole trials, once the batch is read (in place).

    The rules are :mod:`microtrials.ingest.plausibility`'s: a range the registry declares, else gross errors
    against every school's scores of the trial (the warehouse's, except the (school, trial) pairs
    this batch replaces, plus the batch's). A trial is matched by the one trial key
    (:mod:`microtrials.ingest.trial_key`: registered name or alias, outcome measure; any round). An outcome set aside is blanked and recorded in quarantine
    (the pupil stays randomised); a baseline set aside is blanked with a warning; an unusual score
    loads with a warning; a file's trial on another scale is not loaded (``trials_rejected``).
    """
    loaded = [d for d in deliveries if d.report.status == "loaded" and d.pupils is not None and d.pupils.num_rows]
    if not loaded:
        return
    registered = trial_key.from_warehouse(con)

    def key_of(intervention: str, measure: str) -> str:
        """The trial's key (:mod:`microtrials.ingest.trial_key`, any round) as one string."""
        key = registered.key(intervention, measure, "")
        return f"{key.intervention}\x1f{key.outcome_measure}"

    keys = {(i, m): key_of(i, m) for d in loaded for i, m in d.report.trials}
    frames = plausibility.batch_frames(
        [(d.report.school_urn or "", d.pupils) for d in loaded], keys,
        con.execute(warehouse.sql("trial_spellings")).fetchall(), key_of,
    )
    with _registered(con, frames):
        spreads = plausibility.spreads_from(con.execute(warehouse.sql("trial_score_spread")).fetchall())
    ranges = plausibility.declared_ranges(con, key_of)
    for delivery in loaded:
        _judge_file(delivery, keys, spreads, ranges)


def _judge_file(delivery: _Delivery, keys: dict, spreads: dict, ranges: dict) -> None:
    """:func:`_judge_against_trials` for one file: apply :func:`microtrials.ingest.plausibility.judge_file`."""
    pupils, report = delivery.pupils, delivery.report
    rows = pupils.select(["intervention", "outcome_measure", "outcome", "baseline", "line"]).to_pandas()
    verdict = plausibility.judge_file(rows, keys, spreads, ranges)
    for column in plausibility.COLUMNS:
        lines = verdict.set_aside.loc[verdict.set_aside["column_name"] == column, "line"]
        if len(lines):
            blank = pa.array(rows["line"].isin(lines).to_numpy())
            index = pupils.schema.get_field_index(column)
            pupils = pupils.set_column(index, column, pc.if_else(blank, pa.scalar(None, pa.float64()), pupils.column(column)))
    is_outcome = verdict.set_aside["column_name"] == "outcome"
    delivery.quarantine = _with_entries(delivery, delivery.quarantine, verdict.set_aside[is_outcome])
    delivery.warnings = _with_entries(
        delivery, delivery.warnings, pd.concat([verdict.set_aside[~is_outcome], verdict.unusual], ignore_index=True)
    )
    for rule, count in verdict.set_aside[is_outcome]["rule"].value_counts().items():
        report.quarantined_by_reason[rule] = report.quarantined_by_reason.get(rule, 0) + int(count)
    report.outcomes_set_aside = int(verdict.set_aside.loc[is_outcome, "line"].nunique())
    report.rows_with_warnings = extracts.distinct_lines(delivery.warnings)
    report.warned_by_reason = extracts.rows_by_rule(delivery.warnings)
    if verdict.other_scale:
        drop = pd.Series(list(zip(rows["intervention"], rows["outcome_measure"]))).isin(verdict.other_scale).to_numpy()
        pupils = pupils.filter(pa.array(~drop))
        report.rows_loaded -= int(drop.sum())
        for trial, why in verdict.other_scale.items():
            report.trials_rejected[trials_text([trial])] = why
        report.reason = "; ".join(
            ([report.reason] if report.reason else [])
            + [f"not loaded: {trials_text([t])}: {why}" for t, why in verdict.other_scale.items()]
        )
        if len(verdict.other_scale) == len(report.trials):
            report.status = "rejected"
    delivery.pupils = pupils


def _with_entries(delivery: _Delivery, table: pa.Table, entries: pd.DataFrame) -> pa.Table:
    """``table`` (a file's quarantine or warnings) with ``entries`` (plausibility's) appended."""
    if entries.empty:
        return table
    count = len(entries)
    round_of = dict(zip(delivery.pupils.column("line").to_pylist(), delivery.pupils.column("round").to_pylist()))
    extra = pa.table(
        {
            "line": pa.array(entries["line"], pa.int64()),
            "school_urn": pa.array([delivery.report.school_urn] * count, pa.string()),
            "intervention": pa.array(entries["intervention"], pa.string()),
            "outcome_measure": pa.array(entries["outcome_measure"], pa.string()),
            "round": pa.array([round_of.get(line) or None for line in entries["line"]], pa.string()),
            "column_name": pa.array(entries["column_name"], pa.string()),
            "rule": pa.array(entries["rule"], pa.string()),
            "reason": pa.array(entries["reason"], pa.string()),
            "source_file": pa.array([delivery.report.file_name] * count, pa.string()),
            "delivery_id": pa.array([delivery.delivery_id] * count, pa.string()),
        }
    ).select(table.column_names).cast(table.schema)
    return pa.concat_tables([table, extra])


def _prepare_job(job: tuple) -> _Delivery:
    """:func:`_prepare` for an executor's ``map`` (runs in a worker process)."""
    return _prepare(*job)


def _read_bytes(path: Path) -> bytes | OSError | extracts.FileTooLarge:
    """The file's bytes, or the error that stopped them being read (a file over the size limit is
    never read: extracts.read_file)."""
    try:
        return extracts.read_file(path)
    except (OSError, extracts.FileTooLarge) as exc:
        return exc


def demo_refusal(path: Path, delivery_id: str) -> str | None:
    """In a workspace (``MICROTRIALS_WORKSPACE`` set), why a bundled demo file is refused; else None."""
    from microtrials import workspace
    from microtrials.ingest.privacy import sample_hashes

    if not os.environ.get(workspace.ENV_VAR) or delivery_id not in sample_hashes():
        return None
    return workspace.demo_file_reason(path.name)


def _prepare(path: Path, data: bytes | OSError | extracts.FileTooLarge, delivery_id: str, key: bytes) -> _Delivery:
    """Read and validate one file's bytes into the rows to write, or a rejection."""
    if isinstance(data, extracts.FileTooLarge):
        return _Delivery(delivery_id, FileReport(file_name=path.name, status="rejected", reason=str(data)))
    if isinstance(data, OSError):
        reason = f"{path.name}: could not be opened ({data.strerror}); check the file is readable"
        return _Delivery(delivery_id, FileReport(file_name=path.name, status="rejected", reason=reason))
    refusal = demo_refusal(path, delivery_id)
    if refusal:
        return _Delivery(delivery_id, FileReport(file_name=path.name, status="rejected", reason=refusal))
    try:
        if path.suffix.lower() in NOT_CSV_SUFFIXES:
            raise extracts.ExtractRejected(
                f"{path.name}: only .csv and .xlsx files are loaded; {extracts.SAVE_AS_CSV}"
            )
        extract = extracts.read_extract(path, data)
        checked = extracts.validate(extract)
    except extracts.ExtractRejected as exc:  # its school, when every row names the same one: told, and listed, by URN
        return _Delivery(delivery_id, FileReport(file_name=path.name, status="rejected", reason=str(exc),
                                                 school_urn=extracts.only_urn(path)))
    except Exception as exc:  # noqa: BLE001 - the boundary: a fault reading one file never stops the others
        reason = (f"{path.name}: could not be read because of a fault in microtrials ({type(exc).__name__}: {exc}); "
                  "the other files were loaded; keep this file and tell the data team (it is read again each run)")
        return _Delivery(delivery_id, FileReport(file_name=path.name, status="rejected", reason=reason))
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
        rows_with_warnings=checked.rows_with_warnings,
        warned_by_reason=checked.warned_by_reason(),
        file_warnings=checked.file_warnings(),
    )
    # The cells the entries of the lines listed as set aside or warned about name (see
    # :func:`_list_first_lines`), for the school's feedback file (in memory only: an attribute, not a
    # field, so never in the stored report_json).
    listed = [extracts.first_lines(t, MAX_LINES_LISTED)[0] for t in (checked.quarantine, checked.warnings)]
    wanted = {(n, c) for table in listed if "line" in table.column_names
              for n, c in zip(table.column("line").to_pylist(), table.column("column_name").to_pylist())
              if n is not None and c is not None}
    report.problem_cells = (*feedback.problem_cells(extract.rows, wanted), wanted)
    source = {"source_file": checked.file_name, "delivery_id": delivery_id}
    return _Delivery(
        delivery_id,
        report,
        pupils=_with_source(_pupil_table(checked.good, key), source),
        quarantine=_with_source(checked.quarantine, source),
        warnings=_with_source(checked.warnings, source),
    )


#: Rows set aside, and rows with warnings, stored and explained one by one per file (docs/loading.md,
#: "Rows listed per file"): a school's extract has a few thousand rows; every row is still counted.
MAX_LINES_LISTED = 10_000


def _list_first_lines(delivery: _Delivery) -> None:
    """Keep, to store and explain, the delivery's quarantine entries and warnings of their first
    :data:`MAX_LINES_LISTED` lines each (after plausibility's are added, so the report's counts of
    every row stay as they are); past that, one file warning (also in ``report.file_warnings``) says
    how many more rows are counted but not listed. (1.4 million rows set aside, each stored and
    explained: 48 s and 2.8 GB.)"""
    report, notes = delivery.report, []
    for name, what, counts in (("quarantine", "set aside", report.quarantined_by_reason),
                               ("warnings", "with warnings", report.warned_by_reason)):
        table = getattr(delivery, name)
        if table is None:
            continue
        kept, more, last = extracts.first_lines(table, MAX_LINES_LISTED)
        setattr(delivery, name, kept)
        if more:
            by_rule = ", ".join(f"{rule}: {rows:,}" for rule, rows in counts.items())
            notes.append(
                f"{more:,} more rows {what} after line {last:,} are counted ({by_rule}) but not listed one by one "
                f"(only the first {MAX_LINES_LISTED:,} are); correct the rows listed, check the others for the "
                "same problems and send the whole file again")
    source = {"source_file": report.file_name, "delivery_id": delivery.delivery_id}
    for note in notes:
        report.file_warnings.append(note)
        entry = _with_source(extracts.file_entry("rows not listed", note, report.school_urn), source)
        if delivery.warnings is not None:
            entry = pa.concat_tables([entry.select(delivery.warnings.column_names).cast(delivery.warnings.schema),
                                      delivery.warnings])
        delivery.warnings = entry


def _with_source(table: pa.Table, source: dict[str, str]) -> pa.Table:
    """``table`` with constant text columns naming the file its rows came from."""
    for name, value in source.items():
        table = table.append_column(name, pa.array([value] * table.num_rows, type=pa.string()))
    return table


def _groups_of_distinct_schools(deliveries: list[_Delivery]) -> list[list[_Delivery]]:
    """Consecutive groups in which no school and no file name comes twice, so one group can be
    written at once: a file's deletes never touch another file's rows of the same group."""
    groups: list[list[_Delivery]] = []
    taken: set[tuple[str, str]] = set()
    for delivery in deliveries:
        names = {("file", delivery.report.file_name)}
        if delivery.report.school_urn is not None:
            names.add(("school", delivery.report.school_urn))
        if not groups or names & taken:
            groups.append([])
            taken = set()
        groups[-1].append(delivery)
        taken |= names
    return groups


def _write_group(con: duckdb.DuckDBPyConnection, group: list[_Delivery], how: _How) -> None:
    """Write a group in one transaction; if that fails (not a conflict), each file in its own."""
    try:
        _write_once(con, group, how)
    except duckdb.Error:
        if len(group) == 1:
            raise
        for delivery in group:  # a failing file raises here, after the files before it are written
            _write_once(con, [delivery], how)


def _write_once(con: duckdb.DuckDBPyConnection, group: list[_Delivery], how: _How) -> None:
    """Write ``group`` in one transaction, leaving out files another connection recorded meanwhile
    (a loaded one of those becomes ``unchanged``)."""
    while group:
        try:
            changed = _in_transaction(con, lambda cur: _write(cur, group, how), _frames(group))
            for delivery in group:
                if delivery.report.file_name in changed:
                    delivery.report.__dict__.update(changed[delivery.report.file_name].__dict__)
            return
        except _AlreadyRecorded as recorded:
            for delivery in group:
                if delivery.report.file_name in recorded.changed:  # e.g. a held file rejected again
                    delivery.report.__dict__.update(recorded.changed[delivery.report.file_name].__dict__)
                if _key(delivery) in recorded.files and delivery.report.status == "loaded":
                    delivery.report.status = "unchanged"
            group = [d for d in group if _key(d) not in recorded.files]


class _AlreadyRecorded(Exception):
    """Some files of a group were recorded by another connection since they were looked up."""

    def __init__(self, files: set[tuple[str, str]], changed: dict[str, FileReport] | None = None):
        super().__init__(f"{len(files)} file(s) already recorded")
        self.files = files
        self.changed = changed or {}


def _key(delivery: _Delivery) -> tuple[str, str]:
    return delivery.delivery_id, delivery.report.file_name


def _frames(group: list[_Delivery]) -> dict[str, pa.Table]:
    """The group's rows as the Arrow tables its SQL reads (registered as views)."""
    loaded = [d for d in group if d.report.status == "loaded"]
    frames = {
        "batch_keys": _file_keys((d.delivery_id, d.report.file_name, d.report.status) for d in group),
        "batch_deliveries": pa.Table.from_pylist([_delivery_row(d.delivery_id, d.report) for d in group]),
    }
    if loaded:
        frames |= {
            "batch_files": pa.table({"file_name": pa.array([d.report.file_name for d in loaded], pa.string())}),
            "batch_pupils": pa.concat_tables([d.pupils for d in loaded]).combine_chunks(),
            "batch_quarantine": pa.concat_tables([d.quarantine for d in loaded]).combine_chunks(),
            "batch_warnings": pa.concat_tables([d.warnings for d in loaded]).combine_chunks(),
        }
    return frames


def _write(cur: duckdb.DuckDBPyConnection, group: list[_Delivery], how: _How) -> dict[str, FileReport]:
    """Inside a transaction: plan each loaded file's change sets (:mod:`microtrials.ingest.change_sets`),
    delete the rows the applied ones replace, insert their rows, the files' quarantine and warnings,
    and record every file in ``deliveries`` and every change set in ``change_sets``. A held change
    set changes nothing. Returns the reports that changed (applied once committed), by file name."""
    accept = how.accept
    keys = how.keys or trial_key.from_warehouse(cur)
    plan = _plan(cur, group, how.accept, keys)
    changed = _reports_after(group, plan, accept)
    for delivery in group:  # a file that loads no row at all is rejected, its rows set aside explained
        report = changed.get(delivery.report.file_name, delivery.report)
        if report.status == "loaded" and report.rows_loaded == 0 and not accept:
            changed[report.file_name] = _nothing_loaded(report)
    # the deliveries rows and keys show the reports as they now are (registered afresh on each attempt)
    final = [dataclasses.replace(d, report=changed.get(d.report.file_name, d.report)) for d in group]
    if accept:  # a file with nothing held is told so, and neither recorded again nor written
        for d in final:
            if d.report.file_name not in changed and d.report.status == "loaded":
                d.report = changed[d.report.file_name] = _not_held(d.report)
        final = [d for d in final if d.report.status == "loaded"]
        group = [d for d in group if d.report.file_name in {f.report.file_name for f in final}]
        if not final:
            return changed
    cur.register("batch_deliveries", pa.Table.from_pylist([_delivery_row(d.delivery_id, d.report) for d in final]))
    cur.register("batch_keys", _file_keys((d.delivery_id, d.report.file_name, d.report.status) for d in final))
    recorded = {(row[0], row[1]) for row in cur.execute(warehouse.sql("delivery_seen")).fetchall()}
    # an accepted file recorded as loaded before its school was withdrawn is applied again, not "seen"
    recorded -= {(c.delivery_id, c.file_name) for c in plan.change_sets if accept and c.withdrawn_on}
    if recorded:
        raise _AlreadyRecorded(recorded, changed)
    if any(d.report.status == "loaded" for d in group):
        cur.register("batch_replace", plan.replace)
        cur.register("batch_insert", plan.insert)
        cur.register("batch_quarantine_rounds", _quarantine_rounds(group, keys))
        for name in ("delete_school_trials", "load_pupils", "delete_school_quarantine", "delete_school_warnings",
                     "load_quarantine", "load_warnings"):
            cur.execute(warehouse.sql(name))
    cur.execute(warehouse.sql("load_delivery"))
    record_change_sets(cur, plan.change_sets, how.run_id)
    return changed


def _nothing_loaded(report: FileReport) -> FileReport:
    """``report`` (a file none of whose rows loaded) as a rejection saying why."""
    reasons = ", ".join(f"{rule}: {rows}" for rule, rows in report.quarantined_by_reason.items())
    why = (
        f"{report.file_name}: none of the file's {report.rows_read} rows could be loaded"
        + (f" ({reasons})" if reasons else "")
        + "; see the rows set aside and why, correct them and send the file again"
    )
    return dataclasses.replace(
        report, status="rejected", reason="; ".join([why] + ([report.reason] if report.reason else []))
    )


def _not_held(report: FileReport) -> FileReport:
    """An accepted file none of whose changes would be held: nothing to apply on purpose."""
    why = (f"{report.file_name}: nothing of this file is held (none of its changes would lose more than half "
           "of a trial round's pupils or scores, and its school is withdrawn from none of its trial rounds): "
           "there is nothing to accept; a run loads it as usual")
    return dataclasses.replace(report, status="not held", reason=why, changes=[])


def record_change_sets(cur: duckdb.DuckDBPyConnection, planned: list[change_sets.ChangeSet],
                       run_id: str | None = None) -> None:
    """Insert ``planned`` into the ``change_sets`` table (inside the caller's transaction), with the
    Dagster run recording them, if any."""
    if not planned:
        return
    with _registered(cur, {"batch_change_sets": change_sets.change_sets_table(planned, run_id)}):
        cur.execute(warehouse.sql("insert_change_sets"))


def accept_file(con: duckdb.DuckDBPyConnection, path: Path, key: bytes) -> FileReport:
    """Apply, on the officer's word, the change sets of ``path`` (its current content) that the hold
    rule holds: status ``loaded`` with the ``accepted`` change lines; ``unchanged`` when that exact
    file is already applied; ``not held`` (nothing changed) when none of its changes would be held."""
    return load_files(con, [Path(path)], key, accept=True)[0]


def withdraw(con: duckdb.DuckDBPyConnection, school_urn: str, trial: str | None = None,
             round_name: str | None = None) -> list[change_sets.ChangeSet]:
    """Remove a school's pupil rows (all, one trial's by name or alias, and/or one round's) with
    the rows set aside and warnings that explained them, and record each (school, trial, round)
    removed as a ``withdrawn`` change set, and what the withdrawal covers in ``withdrawal_scopes``
    (every later file of the school with rows in it is held until accepted), in one transaction.
    Returns the change sets (none: nothing of the school matched, nothing changed or recorded)."""
    def work(cur: duckdb.DuckDBPyConnection) -> list[change_sets.ChangeSet]:
        keys = trial_key.from_warehouse(cur)
        plan = change_sets.withdrawal(cur, keys, school_urn, trial, round_name)
        if not plan.change_sets:
            return []
        intervention, round_key = change_sets.withdrawal_scope(keys, school_urn, trial, round_name)
        cur.execute(warehouse.sql("insert_withdrawal_scope"),
                    {"urn": school_urn, "intervention": intervention, "round": round_key})
        cur.register("batch_replace", plan.replace)
        whole = {"urn": school_urn, "whole": not trial and not round_name}
        cur.execute(warehouse.sql("delete_school_trials"))  # the combinations in batch_replace
        cur.execute(warehouse.sql("withdraw_quarantine"), whole)
        cur.execute(warehouse.sql("withdraw_warnings"), whole)
        record_change_sets(cur, plan.change_sets)
        return plan.change_sets

    return _in_transaction(con, work)


def _plan(cur: duckdb.DuckDBPyConnection, group: list[_Delivery], accept: bool,
          keys: trial_key.TrialKeys) -> change_sets.Plan:
    """The change sets of the group's loaded files against the warehouse's rows of their schools."""
    loaded = [d for d in group if d.report.status == "loaded" and d.report.school_urn and d.pupils is not None]
    if not loaded:
        return change_sets.Plan()
    columns = ["source_file", "delivery_id", "school_urn", "intervention", "outcome_measure", "round",
               "pupil_key", "outcome", *change_sets.VALUES]
    incoming = pa.concat_tables([d.pupils.select(columns) for d in loaded]).rename_columns(["file_name", *columns[1:]])
    named = [(d.report.file_name, d.delivery_id, d.report.school_urn, i, m)
             for d in loaded for i, m in d.report.trials if trials_text([(i, m)]) not in d.report.trials_rejected]
    stored = change_sets.stored_rows(cur, [d.report.school_urn for d in loaded])
    return change_sets.plan_changes(stored, incoming, keys, named, accept, change_sets.withdrawals(cur))


QUARANTINE_ROUNDS = pa.schema([(c, pa.string()) for c in ("school_urn", "intervention", "outcome_measure", "round",
                                                          "key_round")])


def _quarantine_rounds(group: list[_Delivery], keys: trial_key.TrialKeys) -> pa.Table:
    """The trial key's round, resolved now as for the pupil rows, of each (school, intervention,
    outcome_measure, round sent) the group's rows set aside name (none without an intervention and
    an outcome measure): ``sql/load_quarantine.sql`` stores it with them as ``key_round``."""
    combos = set()
    for delivery in group:
        if delivery.report.status == "loaded" and delivery.quarantine is not None:
            table = delivery.quarantine.select(QUARANTINE_ROUNDS.names[:4])
            combos |= set(zip(*(table.column(c).to_pylist() for c in table.column_names)))
    rows = [(*combo, keys.key(combo[1], combo[2], combo[0], combo[3]).round) for combo in sorted(combos, key=str)
            if combo[1] and combo[2]]
    return pa.table([pa.array([r[n] for r in rows], pa.string()) for n in range(5)], schema=QUARANTINE_ROUNDS)


def _reports_after(group: list[_Delivery], plan: change_sets.Plan, accept: bool) -> dict[str, FileReport]:
    """The reports of the files with change sets, rewritten to say what they did: each change in
    one line, the rows loaded, and ``held`` (nothing applied) or ``partly held`` with why."""
    by_file: dict[str, list[change_sets.ChangeSet]] = {}
    for change in plan.change_sets:
        by_file.setdefault(change.file_name, []).append(change)
    changed = {}
    for delivery in group:
        mine = by_file.get(delivery.report.file_name)
        if mine is None:
            continue
        held = [c for c in mine if c.state == change_sets.HELD]
        report = dataclasses.replace(
            delivery.report,
            changes=[c.message for c in mine],
            trials_held={c.trial: c.school_text(delivery.report.rows_quarantined > 0) for c in held},
            rows_loaded=sum(c.pupils_after for c in mine if c.state != change_sets.HELD),
        )
        if held:
            report.status = "held" if len(held) == len(mine) else "partly held"
            report.reason = "; ".join(([report.reason] if report.reason else []) + [c.message for c in held])
        elif accept:
            report.status, report.rows_loaded = "loaded", delivery.pupils.num_rows
        changed[report.file_name] = report
    return changed


@contextmanager
def _registered(cur: duckdb.DuckDBPyConnection, frames: dict[str, pa.Table]):
    """``frames`` registered as views for the SQL run inside the ``with``."""
    for name, frame in frames.items():
        cur.register(name, frame)
    try:
        yield
    finally:
        for name in frames:
            cur.unregister(name)


def _file_keys(pairs) -> pa.Table:
    """(delivery_id, file_name, status) rows as a table for the look-up queries."""
    pairs = list(pairs)
    return pa.table(
        {
            "delivery_id": pa.array([p[0] for p in pairs], type=pa.string()),
            "file_name": pa.array([p[1] for p in pairs], type=pa.string()),
            "status": pa.array([p[2] for p in pairs], type=pa.string()),
        }
    )


def _earlier_reports(con: duckdb.DuckDBPyConnection, files: list[tuple[str, str]]) -> dict[tuple[str, str], FileReport]:
    """The stored reports of these exact files (same name and bytes) that were loaded before, as
    ``unchanged`` reports, or held (``held``/``partly held`` again, with their held changes only:
    only ``microtrials accept`` applies them), keyed by (delivery_id, file_name); one query for them all.

    (A rejected file is read again each time, so a fix in the rules reaches it; it is recorded once.)
    """
    if not files:
        return {}
    keys = _file_keys((delivery_id, name, "loaded") for delivery_id, name in files)
    with _registered(con, {"batch_keys": keys}):
        found = con.execute(warehouse.sql("delivery_report")).fetchall()
    reports = {}
    for delivery_id, file_name, report_json, status in found:
        if report_json is None:
            continue
        fields = json.loads(report_json)
        fields["trials"] = [tuple(t) for t in fields["trials"]]
        held = [line for line in fields.get("changes", []) if change_sets.HELD_MARK in line]
        fields |= {"status": "unchanged", "changes": []} if status == "loaded" else {"changes": held}
        reports[delivery_id, file_name] = FileReport(**fields)
    return reports


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


def _in_transaction(con: duckdb.DuckDBPyConnection, work, frames: dict[str, pa.Table] | None = None):
    """Run ``work(con)`` in one transaction, with ``frames`` registered as views for its SQL.

    A write-write conflict with another connection of this process is retried with back-off;
    any other error rolls back and is raised as it is.
    """
    delay = 0.05
    with _registered(con, frames or {}):
        for attempt in range(TRANSACTION_ATTEMPTS):
            con.execute("BEGIN TRANSACTION")
            try:
                result = work(con)
                con.execute("COMMIT")
                return result
            except BaseException as exc:
                warehouse.rollback(con)
                if not (isinstance(exc, duckdb.TransactionException) and "conflict" in str(exc).lower()):
                    raise
                if attempt == TRANSACTION_ATTEMPTS - 1:
                    raise MicrotrialsError(
                        "another connection kept changing the same warehouse rows; run the load again"
                    ) from exc
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def _pupil_table(good: pa.Table, key: bytes) -> pa.Table:
    """The rows to insert, pupil_id replaced by its keyed hash (the raw id goes no further)."""
    keys = pseudonymise(good.column("pupil_id"), key)
    return good.set_column(good.schema.get_field_index("pupil_id"), "pupil_key", keys)
