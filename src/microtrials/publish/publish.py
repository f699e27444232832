"""Publishing safely: atomic file and folder writes, small-number suppression, formula neutralising.

Choices, so a reader (a school downloading the page, a spreadsheet opening a CSV) is never hurt:

- **Atomic files.** ``write_atomic`` writes a temporary file in the target's folder, fsyncs it
  and ``os.replace``-s it over the target: a reader sees the old file or the new one, never a
  half-written one, and a crash leaves the old file.
- **Atomic publications.** ``publish_folder`` writes the whole publication into a staging
  folder beside ``out_dir`` (same file system), fsyncs it, then swaps the two folders. On Linux
  the swap is one ``renameat2(RENAME_EXCHANGE)`` call, so there is no moment without a
  publication; elsewhere it is two renames (old folder aside, staging folder in), leaving a gap of
  microseconds where the folder is missing (a reader gets "not found", never a mix of old and new
  files). Any failure before the swap removes the staging folder and leaves the last good
  publication untouched. Stale files from an earlier publication never survive, because the whole
  folder is replaced. So only a folder that is new, empty or marked as a publication (the
  ``.microtrials-publication`` file every publication carries) is ever replaced: a mistyped
  ``--out`` naming the extracts or the warehouse's folder is refused, never emptied. ``out_dir``
  stays a real folder (no symlink), so ``serve`` and tools that copy or delete it behave as usual.
  The old publication is deleted right after the swap, so a request that resolved the old folder
  an instant before may get "not found" for one file; it never gets a truncated file.
- **Formula neutralising** (OWASP "CSV Injection"): text cells starting with ``=``, ``+``, ``-``,
  ``@``, tab or carriage return get one leading single quote so a spreadsheet shows them as text
  (only in files a spreadsheet opens: CSV here, xlsx in ``workbooks``; pages show the name as
  sent). Only what a spreadsheet would read as a formula (:func:`reads_as_formula`, its first
  character): text that already starts with a quote (``'=HYPERLINK(...)' is not in the registry``)
  is left as it is, never given a second quote. ``published_text`` undoes the quote, so checks
  that read a CSV back compare the names as sent (text sent with a quote before ``=``, ``+``,
  ``-`` or ``@`` reads back without it: every check compares both sides through
  ``published_text``, so they agree). Numeric cells are left alone, and so is text that is a
  plain number (``-0.25``), which a spreadsheet reads as a number, never as a formula.
- **Suppression**: every figure for a group of fewer than ``SUPPRESSION_THRESHOLD`` pupils is
  blanked and a ``suppressed`` column says why, as official statistics do; the secondary
  suppression that stops a sum giving a blanked count back is in ``microtrials.publish.disclosure``.
- **CSV for Excel**: UTF-8 with a byte-order mark, numbers in positional notation (``csv_bytes``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from microtrials.errors import MicrotrialsError
from microtrials.guidance import SUPPRESSION_THRESHOLD

#: First characters a spreadsheet treats as the start of a formula (OWASP CSV Injection).
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
FILE_MODE = 0o644
DIR_MODE = 0o755


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort; not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(path, FILE_MODE)


def _as_bytes(data: bytes | str) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def write_atomic(path: Path, data: bytes | str, sync: bool = True) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` via a fsynced temp file and ``os.replace``.

    ``sync=False`` skips both fsyncs, for a caller writing many files that syncs once after the
    last (``os.sync``): the replace is still atomic, only durability waits for that sync.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(_as_bytes(data))
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync:
        _fsync_dir(path.parent)


def reads_as_formula(text: str) -> bool:
    """Whether a spreadsheet would read ``text`` as a formula: it starts with ``= + - @``, a tab or a
    carriage return and is not a plain number. (Text starting with a quote is read as text.)"""
    return text.startswith(FORMULA_TRIGGERS) and not _PLAIN_NUMBER.fullmatch(text)


def _neutralise_cell(value: object) -> object:
    """``'`` + the text when a spreadsheet would read it as a formula, else the value (once: text
    that starts with a quote is not read as a formula, so it never gets a second one)."""
    if isinstance(value, str) and reads_as_formula(value):
        return "'" + value
    return value


def published_text(cell: str) -> str:
    """The text a neutralised CSV or xlsx cell stands for (the inverse of the neutralising quote):
    ``'@Home reading`` -> ``@Home reading``, ``'-`` -> ``-``; any other text unchanged. Checks that
    read a published file compare names through this (and :func:`microtrials.ingest.names.match_key`), so a
    name starting with ``= + - @`` is an ordinary name."""
    if isinstance(cell, str) and cell.startswith("'") and reads_as_formula(cell[1:]):
        return cell[1:]
    return cell


def neutralise_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells (and column names) cannot run as spreadsheet formulas.

    Text starting with ``= + - @``, tab or carriage return gets a leading ``'`` (OWASP). Numeric
    columns, numbers in mixed columns, and text that is a plain number are unchanged.
    """
    out = frame.copy()
    for column in out.columns:
        series = out[column]
        if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            continue
        if pd.api.types.is_datetime64_any_dtype(series):
            continue
        mapped = series.map(_neutralise_cell, na_action="ignore")
        out[column] = mapped.astype(series.dtype) if isinstance(series.dtype, pd.StringDtype) else mapped
    out.columns = [_neutralise_cell(c) for c in out.columns]
    return out


def read_published_csv(path: Path, **options) -> pd.DataFrame:
    """A published CSV read back as the rows it was written from: BOM dropped, every text cell's
    neutralising quote undone (:func:`published_text`), so '@Home reading' is not shown as
    "'@Home reading" on a terminal or in a check. ``options`` go to ``pandas.read_csv``."""
    frame = pd.read_csv(path, encoding="utf-8-sig", **options)
    for column in frame.columns:
        if pd.api.types.is_object_dtype(frame[column]) or pd.api.types.is_string_dtype(frame[column]):
            frame[column] = frame[column].map(published_text, na_action="ignore")
    frame.columns = [published_text(str(c)) for c in frame.columns]
    return frame


def plain_number(value: float) -> str:
    """A float as positional decimal text, full precision, never scientific notation.

    ``1.69e-14`` -> ``"0.0000000000000169"``, ``0.25`` -> ``"0.25"``, ``3.0`` -> ``"3"``; NaN -> ``""``.
    The shortest digits that round-trip (``repr``), so a machine reading the file loses nothing.
    """
    if value is None or not np.isfinite(value):
        return ""
    text = np.format_float_positional(float(value), trim="-")
    return "0" if text == "-0" else text


def _plain_cell(value: object) -> object:
    if isinstance(value, (float, np.floating)):
        return plain_number(float(value))
    return value


#: The byte-order mark Excel needs to read a CSV as UTF-8 (without it, "Café" shows as "CafÃ©").
BOM = "\ufeff"


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """The CSV a publication holds: UTF-8 with BOM, formulas neutralised, no index, ``\\n`` line ends.

    Floats are written positionally at full precision (``plain_number``): no scientific notation,
    which Excel would otherwise show as ``1.69E-14`` or turn a code into a number.
    """
    out = neutralise_formulas(frame)
    for column in out.columns:
        series = out[column]
        if pd.api.types.is_float_dtype(series) or series.dtype == object:
            out[column] = series.map(_plain_cell).astype(object)
    return (BOM + out.to_csv(index=False, lineterminator="\n")).encode("utf-8")


def write_csv_atomic(path: Path, frame: pd.DataFrame) -> None:
    """Write ``frame`` as a publication CSV (see ``csv_bytes``) atomically to ``path``."""
    write_atomic(path, csv_bytes(frame))


def suppress_small_groups(
    frame: pd.DataFrame,
    count_columns: Iterable[str],
    value_columns: Iterable[str],
    threshold: int = SUPPRESSION_THRESHOLD,
) -> pd.DataFrame:
    """Blank every figure of a row whose group has fewer than ``threshold`` pupils.

    A row is suppressed when any of ``count_columns`` (pupil counts, e.g. the two arms of a
    school) is below ``threshold`` or missing. Its ``value_columns`` become blank (NaN; integer
    columns become nullable integers so whole numbers stay whole) and the
    ``suppressed`` column (added, or extended when present) gives the reason without the count,
    e.g. ``"fewer than 10 pupils (n_control)"``; it is blank for rows published in full. Pass the
    count columns among ``value_columns`` too to blank the small counts themselves.
    """
    count_columns, value_columns = list(count_columns), list(value_columns)
    missing = [c for c in count_columns + value_columns if c not in frame.columns]
    if missing:
        raise MicrotrialsError(f"cannot suppress small groups: columns {missing} are not in the table")
    out = frame.copy()
    reasons = pd.Series("", index=out.index, dtype=object)
    small_any = pd.Series(False, index=out.index)
    for column in count_columns:
        counts = pd.to_numeric(out[column], errors="coerce")
        small = counts.isna() | (counts < threshold)
        text = pd.Series(column, index=out.index, dtype=object)  # the count itself is not given away
        reasons = reasons.where(~small, np.where(reasons == "", text, reasons + "; " + text))
        small_any |= small
    for column in value_columns:
        values = out[column]
        if pd.api.types.is_integer_dtype(values):
            values = values.astype("Int64")  # keep whole numbers whole ("2", not "2.0") in the CSV
        elif not pd.api.types.is_numeric_dtype(values):
            values = pd.to_numeric(values, errors="coerce")
        out[column] = values.mask(small_any)
    new_reason = pd.Series(
        np.where(small_any, f"fewer than {threshold} pupils (" + reasons + ")", ""), index=out.index, dtype=object
    )
    if "suppressed" in out.columns:
        old = out["suppressed"].fillna("").astype(str)
        new_reason = pd.Series(
            np.where((old != "") & (new_reason != ""), old + "; " + new_reason, old + new_reason),
            index=out.index, dtype=object,
        )
    out["suppressed"] = new_reason
    return out


def _safe_relative(name: str) -> PurePosixPath:
    """A publication file name as a relative path that cannot leave the folder."""
    path = PurePosixPath(name)
    if (not name or "\\" in name or "\x00" in name or path.is_absolute()
            or any(part in ("", ".", "..") for part in name.split("/"))):
        raise MicrotrialsError(f"publication file name {name!r} is not a plain relative path")
    return path


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux ``renameat2(RENAME_EXCHANGE)``; False if unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


#: Written into every publication; a folder is only ever replaced if it holds this file (or is new or empty).
MARKER = ".microtrials-publication"
MARKER_TEXT = ("This folder is a microtrials publication. `microtrials run` replaces it whole at every\n"
               "publication: keep nothing else in it (extracts, the warehouse, Dagster's folder).\n")


#: What a publication is made of: a folder holding anything else is never taken for an unmarked one.
PUBLICATION_SUFFIXES = frozenset({".html", ".csv", ".xlsx", ".svg", ".png", ".json", ".css", ".js", ".txt"})


def _earlier_publication(out_dir: Path, suffixes: Iterable[str]) -> bool:
    """Whether a folder without the marker is a publication from before markers were written.

    It must hold ``evidence_table.csv`` and ``index.html`` at its top, and every file in it must have
    one of ``suffixes`` (.html, .csv, ...): a folder holding anything else (a warehouse, Dagster's
    storage, someone's documents) is never taken for one.
    """
    if not ((out_dir / "evidence_table.csv").is_file() and (out_dir / "index.html").is_file()):
        return False
    allowed = {s.lower() for s in suffixes}
    for _, _, names in os.walk(out_dir):
        if any(Path(name).suffix.lower() not in allowed for name in names):
            return False
    return True


def check_replaceable(out_dir: Path, suffixes: Iterable[str] = PUBLICATION_SUFFIXES) -> None:
    """Raise a MicrotrialsError unless ``out_dir`` may be replaced by a publication.

    Replaceable: a path that does not exist, an empty folder, a folder holding :data:`MARKER` (an
    earlier publication), or an earlier publication from before markers (``_earlier_publication``,
    files with ``suffixes`` only). Anything else may be someone's data (the extracts, the
    warehouse, DAGSTER_HOME): it is never deleted.
    """
    out_dir = Path(out_dir)
    if out_dir.is_symlink():
        raise MicrotrialsError(f"{out_dir} is a symbolic link: publish to the folder it points to, "
                               "or link your web root to the publication folder instead")
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise MicrotrialsError(f"{out_dir} exists and is not a folder: move it away or choose another --out")
    if (out_dir / MARKER).is_file() or not any(out_dir.iterdir()) or _earlier_publication(out_dir, suffixes):
        return
    raise MicrotrialsError(
        f"{out_dir} already holds files that are not a microtrials publication (it has no {MARKER} file), "
        "and publishing replaces the whole folder: choose an empty or new folder with --out (nothing was changed)")


def publish_folder(out_dir: Path, files: Mapping[str, bytes | str]) -> Path:
    """Replace the publication in ``out_dir`` with exactly ``files`` ({relative path: content}) and
    the :data:`MARKER` file.

    Refuses (MicrotrialsError, nothing changed) a folder that is not replaceable
    (:func:`check_replaceable`). Removes staging folders of dead publications (:func:`remove_dead_staging`), builds
    ``.<name>.staging-<pid>-<host>-<id>`` beside ``out_dir``, fsyncs every
    file and folder, then swaps it in (see the module docstring). A failure before the swap leaves
    the old publication as it was. Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    suffixes = {PurePosixPath(name).suffix for name in files} & PUBLICATION_SUFFIXES
    check_replaceable(out_dir, suffixes)
    parent = out_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    remove_dead_staging(out_dir)
    token = f"{os.getpid()}-{_HOST}-{uuid.uuid4().hex[:12]}"
    staging = parent / f".{out_dir.name}.staging-{token}"
    old = parent / f".{out_dir.name}.old-{token}"
    try:
        staging.mkdir(mode=DIR_MODE)
        os.chmod(staging, DIR_MODE)
        folders = {staging}
        for name, data in files.items():
            target = staging / _safe_relative(name)
            for folder in reversed(target.relative_to(staging).parents[:-1]):
                if (staging / folder) not in folders:
                    (staging / folder).mkdir(mode=DIR_MODE, exist_ok=True)
                    folders.add(staging / folder)
            _write_synced(target, _as_bytes(data))
        _write_synced(staging / MARKER, MARKER_TEXT.encode("utf-8"))
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            _fsync_dir(folder)
        check_replaceable(out_dir, suffixes)  # again, just before the swap: nothing may have moved in meanwhile
        if out_dir.is_dir():
            if not _exchange(staging, out_dir):
                os.rename(out_dir, old)
                try:
                    os.rename(staging, out_dir)
                except BaseException:
                    os.rename(old, out_dir)
                    raise
            # after an exchange the staging name holds the old publication, removed below
        else:
            os.rename(staging, out_dir)
        _fsync_dir(parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out_dir


#: This machine, as staging folder names carry it (a folder on a shared disk may be another machine's).
_HOST = re.sub(r"[^A-Za-z0-9]+", "", socket.gethostname())[:32] or "host"
#: A staging folder this old is left over whatever process made it (a publication takes seconds).
STALE_STAGING_SECONDS = 6 * 3600


def remove_dead_staging(out_dir: Path) -> list[Path]:
    """Remove the staging folders beside ``out_dir`` that no live publication is using, and return them.

    ``publish_folder`` names them ``.<name>.staging-<pid>-<host>-<id>`` (and ``.old-`` for the moment
    of a two-rename swap); a process killed while publishing leaves one behind. One is removed when
    its process is gone from this machine, or when it is older than :data:`STALE_STAGING_SECONDS`
    (another machine's, or named before names carried a pid). Only real folders with exactly these
    names are touched, never a symbolic link or anything else.
    """
    out_dir = Path(out_dir)
    pattern = re.compile(re.escape(f".{out_dir.name}.") + r"(?:staging|old)-(?:(\d+)-([A-Za-z0-9]+)-)?[0-9a-f]{12}")
    removed = []
    try:
        entries = list(out_dir.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or entry.is_symlink() or not entry.is_dir():
            continue
        pid, host = match.group(1), match.group(2)
        mine_and_dead = pid is not None and host == _HOST and int(pid) != os.getpid() and not pid_alive(int(pid))
        try:
            stale = time.time() - entry.stat().st_mtime > STALE_STAGING_SECONDS
        except OSError:
            continue
        if mine_and_dead or stale:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine and is not a zombie (no /proc: trust kill(0))."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


# Column names that would identify pupils if they reached a published file.
IDENTIFIER_COLUMNS = ("pupil_id", "pupil_key")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TH = re.compile(r"<th[^>]*>\s*([^<]*?)\s*</th>", re.IGNORECASE)


def hex_candidates(files: Mapping[str, bytes | str]) -> set[str]:
    """Every 64-hex-digit run in the files' text (lowercased): the only strings that could be pupil keys."""
    found: set[str] = set()
    for content in files.values():
        found.update(_HEX64.findall(_as_bytes(content).decode("utf-8", errors="ignore").lower()))
    return found


def pupil_keys_in(con, files: Mapping[str, bytes | str]) -> set[str]:
    """The warehouse's pupil keys that occur in ``files``: one lookup of the files' 64-hex-digit
    strings in `pupils` (sql/pupil_keys_among.sql), so a national warehouse's millions of keys are
    never loaded into memory. Pass the result to ``identifier_findings``."""
    candidates = sorted(hex_candidates(files))
    if not candidates:
        return set()
    from microtrials.ingest import warehouse

    return {row[0] for row in con.execute(warehouse.sql("pupil_keys_among"), {"keys": candidates}).fetchall()}


def identifier_findings(files: Mapping[str, bytes | str], pupil_keys: set[str]) -> list[tuple[str, str]]:
    """(file, what) for each file holding a warehouse pupil_key or a column named pupil_id/pupil_key.

    Scans CSV header rows (of files with data rows: an empty extract template for schools names
    ``pupil_id`` as a column to fill, not a value) and HTML table headers for the names, and every
    file's text for the 64-hex-digit keys. Used before a publication is swapped in and again by the asset check.
    """
    findings = []
    for name, content in sorted(files.items()):
        text = _as_bytes(content).decode("utf-8", errors="ignore")
        hits = len(set(_HEX64.findall(text.lower())) & pupil_keys)
        if hits:
            findings.append((name, f"{hits} pupil_key value(s)"))
        headers: list[str] = []
        if name.lower().endswith(".csv"):
            lines = [line for line in text.lstrip("\ufeff").split("\n") if line.strip()]
            # A header with no data rows (an extract template for schools) holds no identifier.
            if len(lines) > 1:
                headers = [h.strip().strip('"').lower() for h in lines[0].split(",")]
        elif name.lower().endswith((".html", ".htm")):
            headers = [h.lower() for h in _TH.findall(text)]
        named = sorted(set(headers) & set(IDENTIFIER_COLUMNS))
        if named:
            findings.append((name, "column " + ", ".join(named)))
    return findings


# ---------------------------------------------------------------------------------------------
# A staged publication: built and judged by the blocking checks before it may replace the published folder


STAGED_FILES = "publication"  # the staged folder's subfolder holding the files to publish


def staged_folder(out_dir: Path, run_id: str) -> Path:
    """Where a run stages its publication before the checks: ``.<name>.staged-<run>`` beside ``out_dir``."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.staged-{run_id[:12]}"


def stage_publication(out_dir: Path, run_id: str, files: Mapping[str, bytes | str],
                      extras: Mapping[str, bytes | str]) -> Path:
    """Write ``files`` under :func:`staged_folder` (in ``publication/``) and ``extras`` (what the swap
    needs besides the files) beside them; the published folder is not touched. The staged folder is
    readable by its owner only (a publication that fails its checks may hold what must not be shared).
    Staged folders of earlier runs are removed first."""
    staged = staged_folder(out_dir, run_id)
    for earlier in Path(out_dir).parent.glob(f".{Path(out_dir).name}.staged-*"):
        if earlier != staged and earlier.is_dir() and not earlier.is_symlink():
            shutil.rmtree(earlier, ignore_errors=True)
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(mode=0o700, parents=True)
    os.chmod(staged, 0o700)
    for name, data in files.items():
        target = staged / STAGED_FILES / _safe_relative(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_as_bytes(data))
    for name, data in extras.items():
        (staged / _safe_relative(name)).write_bytes(_as_bytes(data))
    return staged


def staged_files(staged: Path) -> dict[str, bytes]:
    """The files of a staged publication, {relative path: content}, as :func:`publish_folder` takes them."""
    root = Path(staged) / STAGED_FILES
    if not root.is_dir():
        raise MicrotrialsError(f"no staged publication at {root}: run the whole refresh again "
                               "(the publication is staged and swapped in by the same run)")
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
