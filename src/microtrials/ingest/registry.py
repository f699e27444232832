"""The trial registry `trials.csv`: read and validate it like an extract, one typed round per good row.

An LA officer keeps one row per trial round (columns in :data:`COLUMNS`; docs/registry.md). A bad
row is named (line as a spreadsheet shows it, column, what is wrong, what to do) and left out;
nothing else stops. The file may be UTF-8 with or without a byte-order mark, or Windows-1252
("ANSI", as older Excel saves "CSV (Comma delimited)").
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from datetime import date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa

from microtrials.stats.effect_sizes import months_progress
from microtrials.errors import MicrotrialsError
from microtrials.ingest.extracts import ExtractRejected, decode_text, normalise_header, windows_1252_warning
from microtrials.ingest.trial_key import TrialKey, TrialKeys, plain_key
from microtrials.ingest.trial_key import name_index as trial_key_names
from microtrials.ingest.names import match_key

FILE_NAME = "trials.csv"
ENV_VAR = "MICROTRIALS_TRIALS"
COLUMNS = (
    "intervention", "outcome_measure", "round", "start_date", "end_date", "schools", "aliases",
    "secondary_outcomes", "registered_on", "toolkit_strand", "national_months", "cost_per_pupil",
    "description", "results_due", "year_groups", "dosage", "delivered_by", "contact", "outcome_min", "outcome_max",
    "baseline_min", "baseline_max",
)
# Optional words the trial page shows as written (after these checks): how it is delivered and whom
# to ask. (column, longest allowed, example for the message)
DELIVERY_COLUMNS = (("dosage", 120, "2 x 30 min a week for 10 weeks"), ("delivered_by", 80, "trained TA"),
                    ("contact", 120, "Research lead, Park End Primary"))
_EMAIL_OR_PHONE = re.compile(r"@|\b\d[\d ()+-]{8,}\d\b")
_PUPILISH = re.compile(r"\b(pupils?|students?|child(ren)?|upn)\b|\b[A-Z]\d{12}\b", re.IGNORECASE)
_YEAR_PART = re.compile(r"^(?:y(?:ears?|r)?\s*)?(r|reception|\d{1,2})(?:\s*(?:-|to|\u2013)\s*(?:y(?:ears?|r)?\s*)?(\d{1,2}))?$",
                        re.IGNORECASE)
REQUIRED_COLUMNS = ("intervention", "outcome_measure", "start_date", "schools")

# EEF Teaching and Learning Toolkit cost bands, pounds per pupil per year (EEF, "Teaching and
# Learning Toolkit: guide to the Toolkit", cost rating): (upper limit, rating). Under £80 -> £,
# up to £200 -> ££, up to £720 -> £££, up to £1,200 -> ££££, above -> £££££.
COST_BANDS: tuple[tuple[float, str], ...] = ((80.0, "£"), (200.0, "££"), (720.0, "£££"), (1200.0, "££££"))
COST_TOP_BAND = "£££££"

_URN = re.compile(r"^[0-9]{6}$")
_SCHOOL_SEPARATORS = re.compile(r"[\s;,]+")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_UK_DATE = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})$")
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$")


@dataclass(frozen=True)
class RegistryProblem:
    """One bad row (or a whole-file problem, line 0): where, what is wrong, what to do."""

    line: int
    column: str
    problem: str
    action: str
    intervention: str = ""
    kept: bool = False  # the row is used without the bad value (an ambiguous alias), not left out

    @property
    def message(self) -> str:
        where = f"{FILE_NAME} line {self.line}" if self.line else FILE_NAME
        if self.column:
            where += f", column {self.column}"
        return f"{where}: {self.problem}; {self.action}"


@dataclass(frozen=True)
class TrialRound:
    """One registered round of a trial, as the officer wrote it (names trimmed, lists split)."""

    intervention: str
    outcome_measure: str
    round: str
    start_date: date
    end_date: date | None
    schools: frozenset[str]
    aliases: tuple[str, ...] = ()
    secondary_outcomes: tuple[str, ...] = ()
    registered_on: date | None = None
    toolkit_strand: str | None = None
    national_months: int | None = None
    cost_per_pupil: float | None = None
    description: str = ""
    line: int = 0
    results_due: date | None = None  # when schools' results are due; None: end_date + the workspace's days
    year_groups: str = ""
    dosage: str = ""
    delivered_by: str = ""
    contact: str = ""
    # The valid range of the primary outcome's and the baseline's scores (either end may be open).
    outcome_min: float | None = None
    outcome_max: float | None = None
    baseline_min: float | None = None
    baseline_max: float | None = None

    @cached_property
    def key(self) -> tuple[str, str]:
        """(intervention, round) as matching keys (:func:`microtrials.ingest.names.match_key`), worked out once."""
        return match_key(self.intervention), match_key(self.round)

    @property
    def cost_rating(self) -> str | None:
        """The Toolkit cost band of ``cost_per_pupil`` (see :func:`cost_rating`)."""
        return cost_rating(self.cost_per_pupil)


@dataclass(frozen=True)
class Registry:
    """The rounds of every good row, the problems of the bad ones, and the file's identity."""

    rounds: tuple[TrialRound, ...]
    problems: tuple[RegistryProblem, ...]
    sha256: str
    path: str = ""
    encoding: str = "utf-8"
    rows_read: int = 0
    encoding_note: str = ""  # the warning for a file read as Windows-1252 (else "")

    @cached_property
    def _by_key(self) -> dict[str, list[TrialRound]]:
        """match_key(intervention) -> its rounds ordered by start_date then file order (built once)."""
        grouped: dict[str, list[TrialRound]] = {}
        for r in self.rounds:
            grouped.setdefault(match_key(r.intervention), []).append(r)
        return {key: sorted(rounds, key=lambda r: (r.start_date, r.line)) for key, rounds in grouped.items()}

    @cached_property
    def _names(self) -> dict[str, tuple[str, str]]:
        return name_index(self)

    def interventions(self) -> list[str]:
        """Canonical intervention names, in file order, each once."""
        seen: dict[str, str] = {}
        for r in self.rounds:
            seen.setdefault(match_key(r.intervention), r.intervention)
        return list(seen.values())

    def rounds_of(self, intervention: str) -> list[TrialRound]:
        """The rounds of one intervention (by name or alias), ordered by start_date then file order."""
        canonical = self.canonical(intervention)
        return [] if canonical is None else list(self._by_key.get(match_key(canonical), []))

    def canonical(self, spelling: str) -> str | None:
        """The registered name a spelling means (by name, then alias; case, spacing and Unicode
        form ignored), or None when it is not in the registry."""
        return self._names.get(match_key(spelling), (None, ""))[0]


def cost_rating(cost_per_pupil: float | None) -> str | None:
    """EEF Toolkit cost rating per pupil per year: £ under £80, ££ up to £200, £££ up to £720,
    ££££ up to £1,200, £££££ above; None when the cost is unknown.

    "Under £80" is strict (£80 itself is ££); the other limits belong to their band (£200 is ££).
    """
    if cost_per_pupil is None or not math.isfinite(float(cost_per_pupil)):
        return None
    cost = float(cost_per_pupil)
    if cost < COST_BANDS[0][0]:
        return COST_BANDS[0][1]
    for upper, rating in COST_BANDS[1:]:
        if cost <= upper:
            return rating
    return COST_TOP_BAND


def registry_path(extracts: Path | str, explicit: Path | str | None = None,
                  environ: Mapping[str, str] | None = None) -> Path:
    """Where the registry is: ``explicit`` (``--trials FILE``), else ``$MICROTRIALS_TRIALS``, else
    ``<extracts>/../trials.csv`` (so ``data/trials.csv`` for ``data/extracts/``)."""
    if explicit:
        return Path(explicit)
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR):
        return Path(env[ENV_VAR])
    return Path(extracts).absolute().parent / FILE_NAME


def no_registry_warning(path: Path | str) -> str:
    """What to say when there is no registry: the run goes on, and how to add one."""
    return (
        f"no trial registry at {path}: every intervention name is taken as a trial, as before. "
        f"To register trials, write {FILE_NAME} there (one row per trial round: intervention, "
        "outcome_measure, round, start_date, end_date, schools, ...; see docs/registry.md), or give "
        f"its place with --trials FILE or {ENV_VAR}"
    )


def load_registry(path: Path | str) -> Registry | None:
    """The registry at ``path``, or None when there is no such file (see :func:`no_registry_warning`).

    Raises :class:`RegistryUnreadable` for a file that cannot be read or used as a whole, and for
    one over :data:`MAX_REGISTRY_BYTES` (before reading it)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    return read_registry(registry_bytes(path), str(path))


def registry_bytes(path: Path | str) -> bytes:
    """The registry file's bytes; :class:`RegistryUnreadable` (before reading) when it is over
    :data:`MAX_REGISTRY_BYTES` or not a regular file (a folder, a device, a pipe, a broken link:
    taking it for "no registry" would publish every trial as unregistered)."""
    if not Path(path).is_file():
        raise RegistryUnreadable(f"{FILE_NAME}: {path} is not a file (a folder, a device or a broken link); "
                                 "put the registry there as a CSV file, or remove what is there to run without one")
    with open(path, "rb") as handle:
        data = handle.read(MAX_REGISTRY_BYTES + 1)
    if len(data) > MAX_REGISTRY_BYTES:
        size = os.stat(path).st_size
        raise RegistryUnreadable(
            f"{FILE_NAME}: the file is {size / 2**20:.0f} MB, more than a registry of trial rounds needs "
            f"(the limit is {MAX_REGISTRY_BYTES // 2**20} MB): check it is the registry, then {SAVE_AS}")
    return data


SAVE_AS = "in Excel use File > Save As > 'CSV UTF-8 (Comma delimited) (*.csv)' and save it as trials.csv again"
#: A registry larger than this is refused before it is read (20,000 rounds take about 3 MB).
MAX_REGISTRY_BYTES = 64 * 2**20


class RegistryUnreadable(MicrotrialsError):
    """trials.csv cannot be read or used as a whole (its encoding, its header, or no usable row):
    the run stops before anything is published, so the last publication stays."""


def _decoded(data: bytes) -> tuple[str, str, int | None]:
    """Text, encoding and the first non-UTF-8 line (Windows-1252 only), read as an extract is read."""
    try:
        text, cp1252_line = decode_text(FILE_NAME, data, SAVE_AS)
    except ExtractRejected as exc:
        raise RegistryUnreadable(str(exc)) from exc
    if cp1252_line is not None:
        return text, "cp1252", cp1252_line
    return text, ("utf-8-sig" if data.startswith(b"\xef\xbb\xbf") else "utf-8"), None


def decode(data: bytes) -> tuple[str, str]:
    """The text and its encoding ('utf-8', 'utf-8-sig' or 'cp1252') as :func:`read_registry` reads it;
    raises :class:`RegistryUnreadable` as it does."""
    text, encoding, _ = _decoded(data)
    return text, encoding


def read_registry(data: bytes, path: str = FILE_NAME) -> Registry:
    """Parse and validate the registry's bytes: bad rows become problems (line, column, what to do).

    Raises :class:`RegistryUnreadable` when the file as a whole cannot be used: not UTF-8 or
    Windows-1252 text (in the extract's words: :func:`microtrials.ingest.extracts.decode_text`), no usable
    header, or rows none of which is usable. Line numbers are spreadsheet rows (header = 1, blank
    rows counted, a quoted cell with a line break stays one row). Linear in the rows.
    """
    sha = hashlib.sha256(data).hexdigest()
    text, encoding, cp1252_line = _decoded(data)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        records = list(reader)
    except csv.Error as exc:
        raise RegistryUnreadable(f"{FILE_NAME} line {reader.line_num}: the file could not be read as CSV ({exc}); "
                                 f"correct that line, then {SAVE_AS}") from exc
    positions = _header_positions(records)
    problems: list[RegistryProblem] = []
    parsed_rows: list[TrialRound] = []
    left_out: dict[str, tuple[str, int]] = {}  # a row left out still names its trial: no alias may take it
    rows_read = 0
    for index, record in enumerate(records[1:], start=2):
        if not any(cell.strip() for cell in record):
            continue
        rows_read += 1
        cells = {name: (record[i].strip() if i < len(record) else "") for name, i in positions.items()}
        parsed, row_problems = _parse_row(index, cells)
        problems.extend(row_problems)
        if parsed is not None:
            parsed_rows.append(_with_results_due(parsed, cells.get("results_due", ""), problems))
        elif cells.get("intervention"):
            left_out.setdefault(match_key(cells["intervention"]), (_clean(cells["intervention"]), index))
    rounds, name_problems = _resolve_names(parsed_rows, left_out)
    problems = sorted(problems + name_problems, key=lambda p: p.line)
    if rows_read and not rounds:
        raise RegistryUnreadable(
            f"{FILE_NAME}: none of its {rows_read} row(s) can be used (the first: {problems[0].message}); correct "
            "the rows and run again (nothing was published: the last publication stays)")
    note = "" if cp1252_line is None else f"{FILE_NAME}: " + windows_1252_warning(cp1252_line, "save trials.csv")
    return Registry(tuple(rounds), tuple(problems), sha, path, encoding, rows_read, note)


def _header_positions(records: list[list[str]]) -> dict[str, int]:
    """Column name -> position in row 1; :class:`RegistryUnreadable` when row 1 is no usable header."""
    if not records or not any(cell.strip() for cell in records[0]):
        raise RegistryUnreadable(f"{FILE_NAME}: the first row is not a header row; put the column names "
                                 "(intervention, outcome_measure, round, ...) in row 1")
    if len(records[0]) == 1 and records[0][0].count(";") >= 2:
        raise RegistryUnreadable(
            f"{FILE_NAME}: the columns are separated by semicolons, not commas; {SAVE_AS} (on a computer set "
            "to a European language, set the list separator to a comma)")
    header = [normalise_header(cell) for cell in records[0]]
    positions = {name: i for i, name in reversed(list(enumerate(header))) if name in COLUMNS}
    missing = [c for c in REQUIRED_COLUMNS if c not in positions]
    if missing:
        raise RegistryUnreadable(
            f"{FILE_NAME} line 1: the header row has no {', '.join(missing)} column; add "
            f"{'them' if len(missing) > 1 else 'it'} to row 1 (columns: {', '.join(COLUMNS)})")
    return positions


def _resolve_names(rows: list[TrialRound], left_out: dict[str, tuple[str, int]] | None = None,
                   ) -> tuple[list[TrialRound], list[RegistryProblem]]:
    """The rows with one spelling per intervention and unambiguous aliases, and the problems found.

    A repeated (intervention, round) leaves the later row out. A name always wins over an alias:
    an alias that is another intervention's name (``left_out``: the names of rows left out for their
    own problems count too), or an alias of two interventions, is an error
    on each row that gives it and is ignored there; the row itself is kept, so no trial loses the
    pupils sent under its own name. Linear: a pass over the rows, then one over their aliases.
    """
    problems: list[RegistryProblem] = []
    first: dict[str, TrialRound] = {}  # intervention key -> its first row (published spelling, line)
    seen: dict[tuple[str, str], int] = {}
    kept: list[TrialRound] = []
    for row in rows:
        if row.key in seen:
            what = f"round '{row.round}'" if row.round else "a round with no name"
            problems.append(RegistryProblem(
                row.line, "round", f"{row.intervention} {what} is already on line {seen[row.key]}",
                "give each round of an intervention its own name (e.g. 2026 Autumn), or delete the repeated row",
                row.intervention))
            continue
        seen[row.key] = row.line
        canonical = first.setdefault(row.key[0], row)
        kept.append(row if canonical is row else replace(row, intervention=canonical.intervention))
    alias_of: dict[str, dict[str, int]] = {}  # alias key -> {intervention key: first line giving it}
    for row in kept:
        for alias in row.aliases:
            if match_key(alias) != row.key[0]:
                alias_of.setdefault(match_key(alias), {}).setdefault(row.key[0], row.line)
    out = []
    for row in kept:
        good = []
        for alias in row.aliases:
            problem = _alias_problem(alias, row, first, alias_of, left_out or {})
            if problem is None:
                good.append(alias)
            elif problem:
                problems.append(RegistryProblem(
                    row.line, "aliases", problem, "use each name or alias for one trial only (this alias is "
                    "ignored until then; both trials keep the pupils sent under their own names)",
                    row.intervention, kept=True))
        out.append(replace(row, aliases=tuple(good)) if len(good) != len(row.aliases) else row)
    return out, problems


def _alias_problem(alias: str, row: TrialRound, first: dict[str, TrialRound],
                   alias_of: dict[str, dict[str, int]], left_out: dict[str, tuple[str, int]]) -> str | None:
    """Why ``alias`` of ``row`` cannot be used (None: it can; "": it is the row's own name, dropped quietly)."""
    key = match_key(alias)
    if key == row.key[0]:
        return ""
    if key in first:
        other = first[key]
        return f"the alias '{alias}' is the name of another trial, {other.intervention} (line {other.line})"
    if key in left_out:
        name, line = left_out[key]
        return (f"the alias '{alias}' is the name of another trial, {name} (line {line}, left out until its "
                "own problem is corrected)")
    others = sorted((line, name) for name, line in alias_of[key].items() if name != row.key[0])
    if others:
        return f"the alias '{alias}' is also an alias of {first[others[0][1]].intervention} (line {others[0][0]})"
    return None


def _parse_row(line: int, cells: dict[str, str]) -> tuple[TrialRound | None, list[RegistryProblem]]:
    """One row as a round, or the problems that leave it out."""
    name = cells.get("intervention", "")
    problems: list[RegistryProblem] = []

    def bad(column: str, problem: str, action: str) -> None:
        problems.append(RegistryProblem(line, column, problem, action, name))

    if not name:
        bad("intervention", "the intervention name is blank", "write the name as it should be published")
    outcome = cells.get("outcome_measure", "")
    if not outcome:
        bad("outcome_measure", "the primary outcome is blank",
            "write the outcome measure the schools will send (fixed before results arrive)")
    start = _date(cells.get("start_date", ""), "start_date", True, bad)
    end = _date(cells.get("end_date", ""), "end_date", False, bad)
    registered = _date(cells.get("registered_on", ""), "registered_on", False, bad)
    if is_reserved_round(cells.get("round", "")):
        bad("round", f"'{_clean(cells['round'])[:40]}' is the name the evidence table gives all rounds together",
            "name the round by its term, e.g. 2026 Summer")
    if start is not None and end is not None and end < start:
        bad("end_date", f"the round ends ({end.isoformat()}) before it starts ({start.isoformat()})",
            "correct start_date or end_date")
    schools = _schools(cells.get("schools", ""), bad)
    months = _number(cells.get("national_months", ""), "national_months", bad, whole=True)
    cost = _number(cells.get("cost_per_pupil", "").replace("£", "").replace(",", "").strip(),
                   "cost_per_pupil", bad, whole=False)
    if cost is not None and cost < 0:
        bad("cost_per_pupil", "the cost per pupil is negative", "write pounds per pupil per year, e.g. 150")
        cost = None
    bounds = _ranges(cells, bad)
    delivery = _delivery(cells, bad)
    if problems or start is None:
        return None, problems
    return TrialRound(
        intervention=_clean(name),
        outcome_measure=_clean(outcome),
        round=_clean(cells.get("round", "")),
        start_date=start,
        end_date=end,
        schools=schools,
        aliases=_split_bar(cells.get("aliases", "")),
        secondary_outcomes=_split_bar(cells.get("secondary_outcomes", "")),
        registered_on=registered,
        toolkit_strand=_clean(cells.get("toolkit_strand", "")) or None,
        national_months=None if months is None else int(months),
        cost_per_pupil=cost,
        description=_clean(cells.get("description", "")),
        line=line,
        **delivery,
        **bounds,
    ), problems


RANGE_COLUMNS = ("outcome_min", "outcome_max", "baseline_min", "baseline_max")


def _ranges(cells: dict[str, str], bad) -> dict[str, float | None]:
    """The declared score ranges: plain numbers, the low end not above the high."""
    bounds: dict[str, float | None] = {}
    for column in RANGE_COLUMNS:
        text = cells.get(column, "").strip()
        bounds[column] = None
        if not text:
            continue
        if not _NUMBER.match(text):
            end = "lowest" if column.endswith("_min") else "highest"
            bad(column, f"'{text[:20]}' is not a number",
                f"write the {end} valid {column.split('_')[0]} score as a number, e.g. {69 if end == 'lowest' else 141}, "
                "or leave it blank")
            continue
        bounds[column] = float(text)
    for score in ("outcome", "baseline"):
        low, high = bounds[f"{score}_min"], bounds[f"{score}_max"]
        if low is not None and high is not None and low > high:
            bad(f"{score}_min", f"{score}_min ({low:g}) is above {score}_max ({high:g})",
                f"swap them: {score}_min is the lowest valid score, {score}_max the highest")
    return bounds


def _year_groups(text: str, bad) -> str:
    """"7", "Y3-Y4", "Years 5 and 6", "R, 1": each part a year 0 (Reception, R) to 13."""
    parts = [p.strip() for p in re.split(r",|;|\||\band\b", text, flags=re.IGNORECASE) if p.strip()]
    for part in parts:
        found = _YEAR_PART.match(part)
        years = [] if found is None else [g for g in found.groups() if g and g.isdigit()]
        if found is None or any(int(y) > 13 for y in years):
            bad("year_groups", f"'{part}' is not a year group",
                "write National Curriculum years, e.g. 7, Y3-Y4 or Reception, 1")
            return ""
    return text


def _delivery(cells: dict[str, str], bad) -> dict[str, str]:
    """The optional page words: year groups, dosage, who delivers it, whom to ask. Checked so that
    nothing about a pupil, no email address and no phone number is published from the registry."""
    out = {"year_groups": _year_groups(_clean(cells.get("year_groups", "")), bad)}
    for column, longest, example in DELIVERY_COLUMNS:
        text = _clean(cells.get(column, ""))
        if len(text) > longest:
            bad(column, f"the text is {len(text)} characters long (at most {longest})", f"shorten it, e.g. '{example}'")
        elif _EMAIL_OR_PHONE.search(text):
            bad(column, "it holds an email address or a phone number, which the public page would show",
                f"write a role and a school instead, e.g. '{example}'")
        elif _PUPILISH.search(text) and column == "contact":
            bad(column, "it seems to name or describe a pupil", f"write a member of staff's role and school, e.g. '{example}'")
        out[column] = text
    return out


def is_reserved_round(name: str) -> bool:
    """Whether a round name reads as the cumulative row's "all rounds" (any case, spacing, hyphens,
    underscores or Unicode form: "All rounds", "ALL-ROUNDS", "all_rounds")."""
    return re.sub(r"[\W_]+", "", match_key(name)) == re.sub(r"[\W_]+", "", CUMULATIVE_ROUND)


def _with_results_due(parsed: TrialRound, text: str, problems: list[RegistryProblem]) -> TrialRound:
    """The round with its results_due date; a bad one is reported and ignored (the round is kept)."""
    found: list[RegistryProblem] = []

    def bad(column: str, problem: str, action: str) -> None:
        found.append(RegistryProblem(parsed.line, column, problem,
                                     action + " (the round is kept; until then its results are due end_date plus "
                                     "the workspace's results_due_days)", parsed.intervention, kept=True))

    due = _date(text.strip(), "results_due", False, bad)
    if due is not None and due < parsed.start_date:
        bad("results_due", f"results are due ({due.isoformat()}) before the round starts "
            f"({parsed.start_date.isoformat()})", "correct results_due")
        due = None
    problems.extend(found)
    return replace(parsed, results_due=due)


def results_due(trial_round: TrialRound, days_after_end: int) -> date | None:
    """When a round's results are due: its results_due, else end_date + ``days_after_end``, else None."""
    if trial_round.results_due is not None:
        return trial_round.results_due
    return None if trial_round.end_date is None else trial_round.end_date + timedelta(days=days_after_end)


def _clean(text: str) -> str:
    """Trimmed, inner whitespace collapsed (a published name never carries stray spaces)."""
    return re.sub(r"\s+", " ", text).strip()


def _split_bar(text: str) -> tuple[str, ...]:
    return tuple(part for part in (_clean(p) for p in text.split("|")) if part)


def _date(text: str, column: str, required: bool, bad) -> date | None:
    """An ISO date (2026-09-01), or a UK date as Excel shows it (01/09/2026 = 1 September)."""
    if not text:
        if required:
            bad(column, f"{column} is blank", "write the date as YYYY-MM-DD, e.g. 2026-09-01")
        return None
    try:
        if _ISO_DATE.match(text):
            return date.fromisoformat(text)
        uk = _UK_DATE.match(text)
        if uk:
            return date(int(uk.group(3)), int(uk.group(2)), int(uk.group(1)))
        if re.match(r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}", text):
            return datetime.fromisoformat(text).date()
    except ValueError:
        pass
    bad(column, f"'{text[:40]}' is not a date", "write the date as YYYY-MM-DD, e.g. 2026-09-01")
    return None


def _schools(text: str, bad) -> frozenset[str]:
    tokens = [t for t in _SCHOOL_SEPARATORS.split(text) if t]
    if not tokens:
        bad("schools", "no schools are listed", "list the planned schools' URNs, separated by spaces or semicolons")
        return frozenset()
    wrong = [t for t in tokens if not _URN.match(t)]
    if wrong:
        shown = ", ".join(f"'{t[:12]}'" for t in wrong[:3]) + (" ..." if len(wrong) > 3 else "")
        bad("schools", f"{shown} {'is not a URN' if len(wrong) == 1 else 'are not URNs'} (a URN has 6 digits)",
            "write each school's 6-digit URN, separated by spaces or semicolons")
    return frozenset(tokens)


def _number(text: str, column: str, bad, whole: bool) -> float | None:
    if not text:
        return None
    if not _NUMBER.match(text):
        bad(column, f"'{text[:20]}' is not a number",
            "write a whole number of months, e.g. 6 or -1" if whole else "write pounds per pupil per year, e.g. 150")
        return None
    value = float(text)
    if whole and value != int(value):
        bad(column, f"'{text}' is not a whole number of months", "write the Toolkit's months, e.g. 6")
        return None
    return value


def name_index(registry: Registry) -> dict[str, tuple[str, str]]:
    """match_key of every registered name and alias -> (canonical name, 'name' or 'alias')."""
    return trial_key_names(registry.rounds)


# ---------------------------------------------------------------------------------------------
# Matching delivered rows to registered rounds

PRIMARY, SECONDARY, EXPLORATORY = "primary", "secondary", "exploratory"
MATCH_COLUMNS = [
    "intervention", "outcome_measure", "school_urn", "round_sent", "rows", "registered",
    "registered_intervention", "round", "outcome_role", "matched_by", "round_rule",
]


@dataclass(frozen=True)
class OfficerMessage:
    """Something the officer should see in the load report and the UI (never stops a run)."""

    level: str  # "warning" (acted on, check it) or "error" (rows kept but not used as evidence)
    rule: str  # short rule name: unregistered, round_needed, round_unknown, unplanned_school, unplanned_round,
    #            exploratory, registry_row, rounds_differ
    text: str
    intervention: str = ""
    school_urn: str = ""


@dataclass(frozen=True)
class Matching:
    """Each delivered combination with its registered round and outcome role, and the messages."""

    combos: pd.DataFrame
    messages: tuple[OfficerMessage, ...]


def match_deliveries(registry: Registry, combos: pd.DataFrame | pa.Table, today: date | None = None) -> Matching:
    """Join each distinct delivered (intervention, outcome_measure, school_urn, round) to the registry.

    ``combos`` (pandas or Arrow) has columns intervention, outcome_measure, school_urn, rows and
    optionally round (blank/None when the school sent none) -- e.g. ``SELECT intervention,
    outcome_measure, school_urn, round, count(*) AS rows FROM pupils GROUP BY ALL``. The rules (docs/registry.md):

    1. the intervention matches a registered name or alias by :func:`names.match_key`; otherwise it
       is unregistered ("not in the registry: add it, or correct the name") and never evidence;
    2. a ``round`` the school sent that names a registered round of that intervention wins;
    3. else a school listed in exactly one round of the intervention belongs to that round;
    4. a school listed in several rounds must send ``round``: until it does, its rows join no round;
    5. a school not in the plan joins the latest round started by ``today`` (start_date <= today),
       else the earliest round, with a warning;
    6. the outcome is ``primary`` when it matches the round's outcome_measure, ``secondary`` when it
       matches one of its secondary_outcomes, otherwise ``exploratory`` (shown to evaluators, not
       published as evidence).

    Output columns (:data:`MATCH_COLUMNS`): the delivered spelling, ``round_sent``, ``registered``,
    ``registered_intervention`` (canonical name), ``round`` (registered round name, None when
    unresolved), ``outcome_role``, ``matched_by`` ('name' | 'alias') and ``round_rule``
    ('sent' | 'plan' | 'unplanned' | 'needs round'); any other column of ``combos`` is carried
    through unchanged.
    """
    keys = TrialKeys(registry.rounds, today)
    frame = combos.to_pandas() if isinstance(combos, pa.Table) else combos.copy()
    if "round" not in frame:
        frame["round"] = None
    extras = [c for c in frame.columns if c not in MATCH_COLUMNS and c != "round" and c.isidentifier()]
    seen = _Seen()
    out = [_match_row(keys, combo, extras, seen) for combo in frame.itertuples(index=False)]
    return Matching(pd.DataFrame(out, columns=MATCH_COLUMNS + extras), tuple(_match_messages(keys, seen)))


@dataclass
class _Seen:
    """What matching met that the officer should hear about (see :func:`_match_messages`)."""

    unregistered: dict[str, dict] = field(default_factory=dict)
    exploratory: dict[tuple[str, str, str], set[str]] = field(default_factory=dict)
    needs_round: set[tuple[str, str]] = field(default_factory=set)
    unplanned: dict[tuple[str, str], str] = field(default_factory=dict)
    unknown_round: set[tuple[str, str, str]] = field(default_factory=set)
    #: (trial, school, round): a registered round sent by a school the round's plan does not list
    sent_unplanned: set[tuple[str, str, str]] = field(default_factory=set)


def _match_row(keys: TrialKeys, combo, extras: list[str], seen: _Seen) -> dict:
    """One delivered combination placed by the one trial-key rule (:class:`TrialKeys`)."""
    spelling, urn = str(combo.intervention), str(combo.school_urn)
    placed = keys.place(spelling, urn, combo.round)
    row = {"intervention": spelling, "outcome_measure": combo.outcome_measure, "school_urn": urn,
           "round_sent": _clean(placed.round_sent) or None, "rows": int(combo.rows), "registered": False,
           "registered_intervention": None, "round": None, "outcome_role": None,
           "matched_by": None, "round_rule": None}
    row.update({c: getattr(combo, c) for c in extras})
    if placed.registered_intervention is None:
        entry = seen.unregistered.setdefault(match_key(spelling), {"spelling": spelling, "schools": set(), "rows": 0})
        entry["schools"].add(urn)
        entry["rows"] += int(combo.rows)
        return row
    canonical = placed.registered_intervention
    row.update(registered=True, registered_intervention=canonical, matched_by=placed.matched_by,
               round_rule=placed.round_rule)
    if placed.sent_unknown:
        seen.unknown_round.add((canonical, urn, placed.round_sent))
    if placed.round_rule == "needs round":
        seen.needs_round.add((canonical, urn))
    elif placed.round_rule == "unplanned":
        seen.unplanned[(canonical, urn)] = placed.round.round
    elif placed.round_rule == "sent" and placed.round.schools and urn not in placed.round.schools:
        seen.sent_unplanned.add((canonical, urn, placed.round.round))
    if placed.round is not None:
        row["round"] = placed.round.round
        row["outcome_role"] = outcome_role(placed.round, str(combo.outcome_measure))
        if row["outcome_role"] == EXPLORATORY:
            seen.exploratory.setdefault((canonical, placed.round.round, str(combo.outcome_measure)), set()).add(urn)
    return row


def _match_messages(keys: TrialKeys, seen: _Seen) -> list[OfficerMessage]:
    """The officer's messages about what matching met: unregistered names, unknown or missing
    rounds, schools not in the plan, outcomes not registered."""
    messages = [_unregistered_message(entry) for entry in seen.unregistered.values()]
    for canonical, urn, _sent in sorted(seen.unknown_round):  # what was sent is never quoted: it could be anything
        names = ", ".join(_round_name(r.round) for r in keys.rounds_of(canonical)) or "none"
        messages.append(OfficerMessage(
            "warning", "round_unknown",
            f"school {urn} sent a round for {canonical} that is not one of its registered rounds "
            f"({names}): correct the round in the extract, or add the round to {FILE_NAME}",
            canonical, urn))
    for canonical, urn in sorted(seen.needs_round):
        names = ", ".join(_round_name(r.round, quoted=False) for r in keys.rounds_of(canonical) if urn in r.schools)
        messages.append(OfficerMessage(
            "error", "round_needed",
            f"school {urn} is planned in several rounds of {canonical} ({names}): its extract must say which "
            "in a `round` column; until then its rows join no round",
            canonical, urn))
    for (canonical, urn), round_name in sorted(seen.unplanned.items()):
        messages.append(OfficerMessage(
            "warning", "unplanned_school",
            f"school {urn} is not in the plan for {canonical}: its rows joined the latest round "
            f"({_round_name(round_name)}); add the school to that round in {FILE_NAME} if that is right",
            canonical, urn))
    for canonical, urn, round_name in sorted(seen.sent_unplanned):
        planned = ", ".join(_round_name(r.round) for r in keys.rounds_of(canonical) if urn in r.schools)
        messages.append(OfficerMessage(
            "warning", "unplanned_round",
            f"school {urn} sent rows for {canonical} {_round_name(round_name)}, a round whose plan in {FILE_NAME} "
            f"does not list it{f' (it is planned in {planned})' if planned else ''}: if the school takes part in "
            "that round, add it to the round's schools; if these are the same pupils as another round's, correct "
            "the round in the extract (the same pupils in two rounds count twice in all rounds)",
            canonical, urn))
    for (canonical, round_name, outcome), urns in sorted(seen.exploratory.items()):
        messages.append(OfficerMessage(
            "warning", "exploratory",
            f"'{outcome}' is not a registered outcome of {canonical} ({_round_name(round_name)}): shown to evaluators "
            "as exploratory, not published as evidence; register it as a secondary outcome before results "
            "arrive if it was planned",
            canonical, ",".join(sorted(urns))))
    return messages


def _round_name(name: str | None, quoted: bool = True) -> str:
    """A registered round as a message names it: '2026 Spring' (quoted), or "the round with no name in
    trials.csv" when the officer left its name blank (never "''")."""
    if name is None or not str(name).strip():
        return f"the round with no name in {FILE_NAME}"
    return f"'{name}'" if quoted else str(name)


def unnamed_unregistered_text(schools: list[str], few_rows: bool = False) -> str:
    """The officer's message for an intervention name not in the registry, without the name: what the
    public registry report says of every unregistered name (microtrials.publish.gate), and the
    officer's own message for a name on fewer than ``QUOTE_NAME_MIN_ROWS`` rows."""
    where = f"school{'s' if len(schools) > 1 else ''} {', '.join(schools)}" if schools else "a school"
    whose = "files'" if len(schools) > 1 else "file's"
    rows = f" on fewer than {QUOTE_NAME_MIN_ROWS} rows" if few_rows else ""
    return (f"an unregistered intervention name{rows} from {where} (not shown here: it could be a pupil's "
            f"details in the wrong column); check the {whose} intervention column, then correct it or add the "
            f"intervention to {FILE_NAME} (loaded, not published as evidence)")


def _unregistered_message(entry: dict) -> OfficerMessage:
    """The message for an intervention spelling not in the registry (never quoted when on few rows)."""
    schools = sorted(entry["schools"])
    where = f"school{'s' if len(schools) > 1 else ''} {', '.join(schools)}"
    if entry["rows"] < QUOTE_NAME_MIN_ROWS:  # so few rows could be a pupil's details typed in the wrong cell
        text = unnamed_unregistered_text(schools, few_rows=True)
        named = ""
    else:
        text = (f"'{entry['spelling']}' is not in the registry: add it, or correct the name "
                f"({entry['rows']} rows from {where}; loaded, not published as evidence)")
        named = entry["spelling"]
    return OfficerMessage("error", "unregistered", text, named, ",".join(schools))


def first_results(matched: pd.DataFrame, column: str = "first_loaded_at") -> dict[tuple[str, str], datetime]:
    """When each registered round's first rows arrived: (match_key(intervention), match_key(round))
    -> the earliest ``column`` among its matched combinations (pass e.g. ``min(loaded_at)`` per
    combination as an extra column of ``combos``; extra columns are carried through matching).
    The input of :func:`outcome_switch_notes`."""
    if column not in matched or not len(matched):
        return {}
    done = matched[matched["registered"] & matched["round"].notna() & matched[column].notna()]
    out: dict[tuple[str, str], datetime] = {}
    for name, round_name, when in zip(done["registered_intervention"], done["round"], done[column]):
        key = (match_key(name), match_key(round_name))
        when = pd.Timestamp(when).to_pydatetime()
        out[key] = min(out.get(key, when), when)
    return out


def outcome_role(trial_round: TrialRound, outcome_measure: str) -> str:
    """'primary' (the round's outcome_measure), 'secondary' (a registered secondary outcome) or
    'exploratory' (anything else), matching spellings by :func:`names.match_key`."""
    key = match_key(outcome_measure)
    if key == match_key(trial_round.outcome_measure):
        return PRIMARY
    if key in {match_key(s) for s in trial_round.secondary_outcomes}:
        return SECONDARY
    return EXPLORATORY


# ---------------------------------------------------------------------------------------------
# Deliveries against the plan

PROGRESS_COLUMNS = [
    "intervention", "round", "start_date", "end_date", "planned", "delivered", "awaited",
    "awaited_urns", "unplanned_urns", "status", "status_note", "withdrawn", "withdrawn_urns",
]


def round_status(planned: int, delivered: int, end_date: date | None, today: date,
                 withdrawn: int = 0) -> tuple[str | None, str]:
    """(status, note) for a round from its deliveries.

    Schools still awaited after ``end_date`` -> ("interim", "awaiting 3 of 12 schools"). Before
    ``end_date`` (or with no end date) a round that awaits schools is still running -> ("interim",
    "round runs until 2026-12-19: 9 of 12 schools delivered so far"). With every planned school
    delivered: (None, "") -- the analysis decides the status. A school ``withdrawn`` (``microtrials
    withdraw``) is no longer awaited: "awaiting 1 of 11 schools; 1 more withdrawn".
    """
    staying = max(planned - withdrawn, 0)
    awaited = max(staying - delivered, 0)
    if awaited == 0:
        return None, ""
    left = f"; {withdrawn} more withdrawn" if withdrawn else ""
    schools = f"school{'s' if staying != 1 else ''}"
    if end_date is not None and end_date < today:
        return "interim", f"awaiting {awaited} of {staying} {schools}{left}"
    until = f"until {end_date.isoformat()}" if end_date is not None else "with no end date yet"
    return "interim", f"round runs {until}: {delivered} of {staying} {schools} delivered so far{left}"


def plan_progress(registry: Registry, matched: pd.DataFrame, today: date | None = None,
                  withdrawn: Iterable[tuple[str, TrialKey]] = ()) -> pd.DataFrame:
    """Per registered round: schools planned, delivered (a planned school with primary-outcome rows
    joined to the round), withdrawn (a planned school not delivered whose withdrawal from the round's
    primary outcome is recorded: ``withdrawn`` as :func:`change_sets.withdrawn_keys` gives it),
    awaited (planned, neither delivered nor withdrawn; URNs space-separated), unplanned schools that
    joined it, and :func:`round_status`."""
    today = today or date.today()
    rows = []
    done = matched[matched["outcome_role"] == PRIMARY] if len(matched) else matched
    joined_by: dict[tuple[str, str], set[str]] = {}  # (intervention, round) -> schools joined: one pass
    if len(done):
        for name, round_name, urn in zip(done["registered_intervention"], done["round"], done["school_urn"]):
            joined_by.setdefault((name, round_name), set()).add(str(urn))
    left_by: dict[TrialKey, set[str]] = {}
    for urn, key in withdrawn:
        left_by.setdefault(key, set()).add(str(urn))
    for r in sorted(registry.rounds, key=lambda r: (match_key(r.intervention), r.start_date, r.line)):
        joined = joined_by.get((r.intervention, r.round), set())
        delivered = joined & r.schools
        left = sorted((left_by.get(plain_key(r.intervention, r.outcome_measure, r.round), set()) & r.schools) - delivered)
        awaited = sorted(r.schools - delivered - set(left))
        status, note = round_status(len(r.schools), len(delivered), r.end_date, today, len(left))
        rows.append({
            "intervention": r.intervention, "round": r.round, "start_date": r.start_date,
            "end_date": r.end_date, "planned": len(r.schools), "delivered": len(delivered),
            "awaited": len(awaited), "awaited_urns": " ".join(awaited),
            "unplanned_urns": " ".join(sorted(joined - r.schools)), "status": status, "status_note": note,
            "withdrawn": len(left), "withdrawn_urns": " ".join(left),
        })
    return pd.DataFrame(rows, columns=PROGRESS_COLUMNS)


# ---------------------------------------------------------------------------------------------
# Outcome switching across registry versions


def outcome_switch_notes(
    versions: list[tuple[datetime, Registry]],
    first_results: Mapping[tuple[str, str], datetime],
) -> dict[tuple[str, str], str]:
    """Notes for rounds whose primary outcome changed after results had arrived.

    ``versions``: every registry version the pipeline has read, with the time it was read (any
    order). ``first_results``: (match_key(intervention), match_key(round)) -> when that round's
    first results (rows of its then-primary outcome, or any rows) were delivered. For each pair of
    consecutive versions, a round whose outcome_measure differs, where the first results arrived
    before the later version was read, gets "primary outcome changed from 'A' to 'B' (registry of
    2026-11-02), after results had arrived (first on 2026-10-20)". Keys are as in ``first_results``.
    """
    notes: dict[tuple[str, str], list[str]] = {}
    ordered = sorted(versions, key=lambda v: v[0])
    for (_, before), (read_at, after) in zip(ordered, ordered[1:]):
        old = {r.key: r for r in before.rounds}
        for r in after.rounds:
            previous = old.get(r.key)
            if previous is None or match_key(previous.outcome_measure) == match_key(r.outcome_measure):
                continue
            arrived = first_results.get(r.key)
            if arrived is None or arrived > read_at:
                continue
            notes.setdefault(r.key, []).append(
                f"primary outcome changed from '{previous.outcome_measure}' to '{r.outcome_measure}' "
                f"(registry read {read_at.date().isoformat()}), after results had arrived "
                f"(first on {arrived.date().isoformat()})")
    return {key: "; ".join(texts) for key, texts in notes.items()}


# ---------------------------------------------------------------------------------------------
# As tables (for the warehouse and the load report)

ROUND_COLUMNS = [
    "sha256", "line", "intervention", "outcome_measure", "round", "start_date", "end_date", "schools",
    "aliases", "secondary_outcomes", "registered_on", "toolkit_strand", "national_months",
    "cost_per_pupil", "cost_rating", "description", *RANGE_COLUMNS,
]
PROBLEM_COLUMNS = ["sha256", "line", "column_name", "problem", "action", "intervention"]


def rounds_frame(registry: Registry) -> pd.DataFrame:
    """One row per round (:data:`ROUND_COLUMNS`, as table ``registry_rounds``): URNs space-separated."""
    rows = [{
        "sha256": registry.sha256, "line": r.line, "intervention": r.intervention,
        "outcome_measure": r.outcome_measure, "round": r.round, "start_date": r.start_date,
        "end_date": r.end_date, "schools": " ".join(sorted(r.schools)), "aliases": "|".join(r.aliases),
        "secondary_outcomes": "|".join(r.secondary_outcomes), "registered_on": r.registered_on,
        "toolkit_strand": r.toolkit_strand, "national_months": r.national_months,
        "cost_per_pupil": r.cost_per_pupil, "cost_rating": r.cost_rating, "description": r.description,
        **{column: getattr(r, column) for column in RANGE_COLUMNS},
    } for r in registry.rounds]
    frame = pd.DataFrame(rows, columns=ROUND_COLUMNS)
    for column in ("start_date", "end_date", "registered_on"):
        frame[column] = pd.to_datetime(frame[column]).dt.date
    frame["national_months"] = frame["national_months"].astype("Int64")
    for column in ("cost_per_pupil", *RANGE_COLUMNS):
        frame[column] = frame[column].astype("Float64")
    return frame


def problems_frame(registry: Registry) -> pd.DataFrame:
    """One row per bad row's problem (:data:`PROBLEM_COLUMNS`, as table ``registry_problems``)."""
    return pd.DataFrame([{
        "sha256": registry.sha256, "line": p.line, "column_name": p.column, "problem": p.problem,
        "action": p.action, "intervention": p.intervention,
    } for p in registry.problems], columns=PROBLEM_COLUMNS)


# ---------------------------------------------------------------------------------------------
# For the evidence table, the page and the load report

#: Columns the registry adds to the evidence table (after the contract's columns).
EVIDENCE_COLUMNS = ["round", "toolkit_strand", "national_months", "cost_per_pupil", "cost_rating", "description"]
CUMULATIVE_ROUND = "all rounds"


def evidence_columns(registry: Registry | None, intervention: str, round_name: str | None) -> dict[str, object]:
    """The registry's columns for one evidence-table row (:data:`EVIDENCE_COLUMNS`).

    ``round_name`` is a registered round, or ``"all rounds"`` for the cumulative row (then the
    latest round's strand, months, cost and description are used). Blank (None) when the
    registry does not know the intervention.
    """
    empty = dict.fromkeys(EVIDENCE_COLUMNS)
    empty["round"] = round_name or None
    rounds = registry.rounds_of(intervention) if registry is not None else []
    if not rounds:
        return empty
    chosen = rounds[-1]
    if round_name and match_key(round_name) != CUMULATIVE_ROUND:
        chosen = next((r for r in rounds if match_key(r.round) == match_key(round_name)), chosen)
    return {
        "round": round_name or chosen.round or None, "toolkit_strand": chosen.toolkit_strand,
        "national_months": chosen.national_months, "cost_per_pupil": chosen.cost_per_pupil,
        "cost_rating": chosen.cost_rating, "description": chosen.description or None,
    }


def _signed_months(months: int | None) -> str:
    return "?" if months is None else (f"{months:+d}" if months else "0")


def local_and_national(effect_size: float | None, ci_low: float | None, ci_high: float | None,
                       toolkit_strand: str | None, national_months: int | None) -> str:
    """The page's comparison, e.g. "here: +3 months (+2 to +4); nationally (EEF Toolkit, Reading
    comprehension strategies): +6 months". Months by :func:`effect_sizes.months_progress`; either
    half is left out when unknown."""
    parts = []
    here = months_progress(effect_size) if effect_size is not None else None
    if here is not None:
        low = months_progress(ci_low) if ci_low is not None else None
        high = months_progress(ci_high) if ci_high is not None else None
        interval = f" ({_signed_months(low)} to {_signed_months(high)})" if low is not None and high is not None else ""
        parts.append(f"here: {_signed_months(here)} month{'s' if abs(here) != 1 else ''}{interval}")
    if national_months is not None:
        strand = f", {toolkit_strand}" if toolkit_strand else ""
        parts.append(f"nationally (EEF Toolkit{strand}): {_signed_months(national_months)} "
                     f"month{'s' if abs(national_months) != 1 else ''}")
    return "; ".join(parts)


def registry_notes(registry: Registry) -> tuple[OfficerMessage, ...]:
    """What the officer should fix in trials.csv itself: each bad row left out (line, column, what is
    wrong, what to do), and warnings about the plan as a whole (rows are kept): rounds of one
    intervention that register different primary outcomes cannot be pooled into one cumulative row."""
    notes = [OfficerMessage("error", "registry_row", p.message, p.intervention) for p in registry.problems]
    if registry.encoding_note:
        notes.append(OfficerMessage("warning", "registry_encoding", registry.encoding_note))
    for name in registry.interventions():
        outcomes = {match_key(r.outcome_measure): r.outcome_measure for r in registry.rounds_of(name)}
        if len(outcomes) > 1:
            notes.append(OfficerMessage(
                "warning", "rounds_differ",
                f"the rounds of {name} register different primary outcomes ({', '.join(sorted(outcomes.values()))}): "
                "each round is analysed on its own, but they are not pooled into an 'all rounds' row",
                name))
    return tuple(notes)


# An unregistered intervention name on fewer rows than this is not quoted to the officer's (public)
# report: a name, id or date typed into the intervention cell of one or two rows looks just like it.
QUOTE_NAME_MIN_ROWS = 10

MESSAGE_COLUMNS = ["level", "rule", "intervention", "school_urn", "message"]


def messages_frame(messages: tuple[OfficerMessage, ...] | list[OfficerMessage]) -> pd.DataFrame:
    """Officer messages as a table for the load report and the UI (:data:`MESSAGE_COLUMNS`)."""
    return pd.DataFrame([{"level": m.level, "rule": m.rule, "intervention": m.intervention,
                          "school_urn": m.school_urn, "message": m.text} for m in messages],
                        columns=MESSAGE_COLUMNS)
