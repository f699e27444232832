"""The officer's commands on the warehouse's deliveries: accept a held change, withdraw a school."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from microtrials.ingest import feedback
from microtrials.ingest import loading
from microtrials.ingest import privacy
from microtrials.ingest import warehouse
from microtrials.ingest.change_sets import ChangeSet
from microtrials.errors import MicrotrialsError

_URN = re.compile(r"^[0-9]{6}$")


def accept(path: Path, db: Path, feedback_dir: Path | None = None) -> tuple[int, list[str]]:
    """Apply the held change sets of the file at ``path`` (its current content) on purpose.

    Returns (exit code, lines to print): 0 when something was applied; 1 when nothing was (the file
    is already applied, or nothing of it is held); the error says what to do when the file cannot
    be read. The load report's row for the file and the school's feedback file follow.
    """
    path = Path(path)
    if not path.is_file():
        raise MicrotrialsError(f"{path} is not a file: name the school's extract whose held change you mean to apply")
    key = privacy.pupil_key([path])
    con = warehouse.connect_with_retry(db)
    try:
        report = loading.accept_file(con, path, key)
        if report.status in ("loaded", "rejected"):
            replace_load_report_rows(con, loading.load_report_frame([report]))
            if feedback_dir is not None:
                feedback.write_feedback(con, [report], {path.name: path}, feedback_dir)
    finally:
        con.close()
    if report.status == "loaded":
        return 0, [f"accepted {path.name}:"] + [f"  {line}" for line in report.changes]
    if report.status == "unchanged":
        return 1, [f"{path.name}: this exact file is already applied; nothing to accept"]
    return 1, [" ".join(str(report.reason or report.status).split())]


def withdraw(urn: str, db: Path, trial: str | None = None, round_name: str | None = None) -> tuple[int, list[str]]:
    """Remove school ``urn``'s rows (all, or one trial's and/or one round's) and record it.

    Returns (exit code, lines to print): 0 with one line per (school, trial, round) withdrawn; 1 when
    the warehouse holds no matching row (nothing changed).
    """
    urn = str(urn).strip()
    if not _URN.match(urn):
        raise MicrotrialsError(f"'{urn}' is not a school URN (6 digits): name the school by its URN, e.g. 222005")
    con = warehouse.connect_with_retry(db)
    try:
        done = loading.withdraw(con, urn, trial, round_name)
    finally:
        con.close()
    if not done:
        which = " ".join(p for p in (f"trial '{trial}'" if trial else "", f"round '{round_name}'" if round_name else "") if p)
        return 1, [f"school {urn}: the warehouse holds no rows{' for ' + which if which else ''}; nothing changed"]
    lines = [f"  {c.message}" for c in done]
    return 0, ["withdrawn from the warehouse (recorded in change_sets; the next run publishes without them):",
               *lines, f"  any later file of the school {held_scope(done[0], trial, round_name)}, "
               "whatever its name or content, is held, not loaded (microtrials accept FILE brings the school back "
               "for the trial rounds of that file); its files may stay in the extracts folder"]


def held_scope(withdrawn: ChangeSet, trial: str | None, round_name: str | None) -> str:
    """Which later files of the school a withdrawal holds, in the officer's words: 'for any trial or
    round' (the whole school), 'with rows for Café Readers (any outcome measure, any round)', 'with rows
    for round 2026 Autumn of any trial', or 'with rows for Café Readers 2026 Autumn (any outcome measure)'
    (``withdrawn``: one of its change sets, for the registered names)."""
    if trial and round_name:
        return f"with rows for {withdrawn.intervention} {withdrawn.round} (any outcome measure)"
    if trial:
        return f"with rows for {withdrawn.intervention} (any outcome measure, any round)"
    if round_name:
        return f"with rows for round {withdrawn.round} of any trial"
    return "for any trial or round"


def replace_load_report_rows(con, frame: pd.DataFrame) -> None:
    """The ``load_report`` table with ``frame``'s rows in place of the rows of the same files."""
    if warehouse.table_exists(con, "load_report"):
        earlier = con.execute(warehouse.sql("load_report")).df()
        if list(earlier.columns) == list(frame.columns):
            earlier = earlier[~earlier["file_name"].isin(set(frame["file_name"]))]
            frame = pd.concat([earlier.astype(frame.dtypes.to_dict()), frame], ignore_index=True)
    warehouse.save_frame(con, "load_report", frame.sort_values("file_name", kind="stable").reset_index(drop=True))

