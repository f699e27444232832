"""School partitions: one dynamic partition per school (its URN), and which extract files belong to it.

A file's partition key is the single valid 6-digit ``school_urn`` in it. A file with no usable URN
(it cannot be read at all, holds several schools, or every URN is malformed) gets the key
``file-<name stem>`` (characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_``),
so its rejection still appears, under its own name, in the UI's partition list.
"""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg

from microtrials.ingest import extracts
from microtrials.ingest import loading

SCHOOLS = "schools"
schools_partitions = dg.DynamicPartitionsDefinition(name=SCHOOLS)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def extract_files(folder: Path) -> list[Path]:
    """The files ``microtrials.ingest.loading.load_folder`` would load, sorted by name; none for a missing folder."""
    return loading.extract_files(folder) if Path(folder).is_dir() else []


def file_key(path: Path) -> str:
    """The key for a file without a usable URN: ``file-`` and its sanitised name stem."""
    stem = _UNSAFE.sub("_", Path(path).stem).strip("_") or "unnamed"
    return f"file-{stem}"


# (path, size, modification time in ns) -> partition key: one `microtrials run` asks for every file's
# school three times (registering partitions, loading, the completeness check); reading 20,000 files
# once is enough. A file whose size or modification time changed is read again.
_KEYS: dict[tuple[str, int, int], str] = {}


def school_key(path: Path) -> str:
    """The partition a file belongs to: its school's URN (``extracts.school_of``), else :func:`file_key`."""
    path = Path(path)
    if path.suffix.lower() in loading.NOT_CSV_SUFFIXES:
        return file_key(path)
    try:
        stat = path.stat()
        seen = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    except OSError:
        seen = None
    if seen is not None and seen in _KEYS:
        return _KEYS[seen]
    try:
        urn = extracts.school_of(path)
    except Exception:  # noqa: BLE001 - unreadable, or a fault reading it: its load says why, the others go on
        urn = None
    key = urn if urn is not None else file_key(path)
    if seen is not None:
        if len(_KEYS) > 200_000:  # a long-lived process (the UI's sensor) never grows without bound
            _KEYS.clear()
        _KEYS[seen] = key
    return key


def content_hash(path: Path) -> str:
    """The file's delivery_id as the warehouse records it: sha256 of its bytes (streamed), or for a
    file over the size limit its size and time (extracts.file_id); '' when it cannot be read."""
    try:
        return extracts.file_id(Path(path))
    except OSError:
        return ""


def files_by_school(folder: Path) -> dict[str, list[Path]]:
    """Partition key -> the extract files in ``folder`` that belong to it (sorted by name)."""
    grouped: dict[str, list[Path]] = {}
    for path in extract_files(folder):
        grouped.setdefault(school_key(path), []).append(path)
    return grouped
