"""The project's memory: registry versions, the evidence history, "what changed" in words, and the cumulative plot."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime

import duckdb
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from microtrials.ingest import warehouse  # noqa: E402
from microtrials.stats.effect_sizes import months_progress  # noqa: E402
from microtrials.ingest.names import match_key  # noqa: E402
from microtrials.ingest.registry import Registry, problems_frame, read_registry, rounds_frame  # noqa: E402
from microtrials.publish.views import interval, shown_strength  # noqa: E402

KEY_COLUMNS = ("intervention", "outcome_measure", "round")
CORRECTION = "correction"  # a publication's correction note, kept with each of its rows
BOOKKEEPING = ("publication_id", "published_at", CORRECTION, "reason")
# Columns the registry gives a row: a change in these alone is "registry changed".
REGISTRY_FIGURES = {"round", "outcome_role", "toolkit_strand", "national_months", "cost_per_pupil", "cost_rating",
                    "description"}
INK, ESTIMATE_COLOUR, GRID_COLOUR = "#1b1b1b", "#1d4f91", "#767676"
# An earlier row's intervention as it was published, when the registry now gives the trial another name.
PUBLISHED_AS = "published_as"


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create the registry and history tables (``sql/registry_schema.sql``) when missing."""
    con.execute(warehouse.sql("registry_schema"))


# ---------------------------------------------------------------------------------------------
# Registry versions


def store_registry(con: duckdb.DuckDBPyConnection, registry: Registry, text: str, read_at: datetime) -> bool:
    """Keep this registry version (once per sha256) and make it the current rounds/problems.

    Returns True when the version is new. ``text`` is the decoded file (kept for audit).
    """
    ensure_tables(con)
    seen = version_kept(con, registry.sha256)
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(warehouse.sql("insert_registry_version"), {
            "sha256": registry.sha256, "read_at": read_at, "path": registry.path, "encoding": registry.encoding,
            "rounds": len(registry.rounds), "problems": len(registry.problems), "content": text,
        })
        con.register("registry_rounds_frame", rounds_frame(registry))
        con.register("registry_problems_frame", problems_frame(registry))
        con.execute(warehouse.sql("delete_registry_rounds"))
        con.execute(warehouse.sql("insert_registry_rounds"))
        con.execute(warehouse.sql("delete_registry_problems"))
        con.execute(warehouse.sql("insert_registry_problems"))
        con.execute("COMMIT")
    except Exception:
        warehouse.rollback(con)
        raise
    finally:
        for name in ("registry_rounds_frame", "registry_problems_frame"):
            try:
                con.unregister(name)
            except Exception:  # not registered when an earlier statement failed
                pass
    return not seen


def store_rounds(con: duckdb.DuckDBPyConnection, registry: Registry | None) -> None:
    """Make ``registry``'s rounds the current ones (``registry_rounds``; none for no registry), so a
    load judges deliveries against the registry as it is now (declared score ranges, aliases); the
    registry asset keeps the version and its problems after the load."""
    ensure_tables(con)
    con.register("registry_rounds_frame", rounds_frame(registry) if registry is not None else
                 rounds_frame(Registry((), (), "")))
    try:
        con.execute("BEGIN TRANSACTION")
        con.execute(warehouse.sql("delete_registry_rounds"))
        con.execute(warehouse.sql("insert_registry_rounds"))
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    finally:
        con.unregister("registry_rounds_frame")


def version_kept(con: duckdb.DuckDBPyConnection, sha256: str) -> bool:
    """Whether a registry version with this content hash is kept."""
    ensure_tables(con)
    return con.execute(warehouse.sql("registry_version_seen"), {"sha256": sha256}).fetchone()[0] > 0


def clear_registry(con: duckdb.DuckDBPyConnection) -> None:
    """No registry file: the current rounds and problems are emptied (kept versions stay)."""
    ensure_tables(con)
    con.execute(warehouse.sql("delete_registry_rounds"))
    con.execute(warehouse.sql("delete_registry_problems"))


def registry_versions(con: duckdb.DuckDBPyConnection) -> list[tuple[datetime, Registry]]:
    """Every stored registry version, re-read from its kept text, with the time it was first read
    (oldest first) -- the input of :func:`microtrials.ingest.registry.outcome_switch_notes`."""
    ensure_tables(con)
    rows = con.execute(warehouse.sql("registry_versions")).fetchall()
    out = []
    for sha, read_at, path, encoding, _, _, content in rows:
        parsed = read_registry(content.encode("utf-8"), path)
        out.append((read_at, dataclasses.replace(parsed, sha256=sha, encoding=encoding)))
    return out


# ---------------------------------------------------------------------------------------------
# Evidence history


def _plain(value: object) -> object:
    """A JSON-safe cell: None for NaN/NA, Python numbers, ISO text for dates."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        return _plain(value.item())
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def as_registered(rows: pd.DataFrame | None, registry: Registry | None) -> pd.DataFrame | None:
    """Earlier publications' rows (:func:`read_history`, or an earlier ``evidence_table.csv``) with each
    intervention as the current registry names it (:meth:`Registry.canonical`: by name, then alias), so
    every comparison with an earlier publication (history, "what changed", disclosure control's previous
    counts) finds a trial renamed with its old name kept as an alias under its new name. A renamed row
    keeps the name it was published under in ``published_as``. A name the registry does not know (no
    registry, or a rename without the old name as an alias) stays as published: a new trial; so does
    a row that would share its publication's row key with another (trials merged: the row published
    under the registered name is the one compared). Idempotent: rows already mapped stay as they are."""
    if rows is None or registry is None or not len(rows) or "intervention" not in rows.columns:
        return rows
    names = [None if _plain(n) is None else str(n) for n in rows["intervention"]]
    registered = [None if n is None else registry.canonical(n) for n in names]
    moved = [r is not None and match_key(r) != match_key(n) for n, r in zip(names, registered, strict=True)]
    groups = list(rows["publication_id"]) if "publication_id" in rows.columns else [""] * len(rows)
    keys = [(g, _key({**row, "intervention": r if m else row.get("intervention")}))
            for g, row, r, m in zip(groups, rows.to_dict("records"), registered, moved, strict=True)]
    taken = Counter(keys)
    moved = [m and taken[k] == 1 for m, k in zip(moved, keys, strict=True)]
    if not any(moved):
        return rows
    out = rows.copy()
    before = list(out[PUBLISHED_AS]) if PUBLISHED_AS in out.columns else [None] * len(out)
    out[PUBLISHED_AS] = [(_plain(b) or n) if m else _plain(b)
                         for b, n, m in zip(before, names, moved, strict=True)]
    out["intervention"] = [r if m else v for v, r, m in zip(rows["intervention"], registered, moved, strict=True)]
    return out


def _key(row: Mapping[str, object]) -> tuple[str, str, str]:
    return tuple(match_key(str(_plain(row.get(c)) or "")) for c in KEY_COLUMNS)  # type: ignore[return-value]


def withdrawn_schools(con: duckdb.DuckDBPyConnection) -> set[tuple[str, str]]:
    """(URN, intervention match key) of every school withdrawn from a trial (``microtrials withdraw``)
    and not delivered again since: what the history calls "withdrawn", never "no longer counted"."""
    if not warehouse.table_exists(con, "change_sets"):
        return set()
    return {(urn, trial) for urn, trial, *_ in con.execute(warehouse.sql("withdrawn_schools")).fetchall()}


def _publication_rows(table: pd.DataFrame, schools: pd.DataFrame | None,
                      withdrawn: set[tuple[str, str]] | None = None) -> list[dict]:
    """The published rows as JSON-safe dicts, each with ``school_urns`` when ``schools`` is given
    (and ``withdrawn_urns``, the trial's schools ``withdrawn``, when any)."""
    urns: dict[tuple[str, str, str], set[str]] = {}
    blanked: dict[tuple[str, str, str], set[str]] = {}
    if schools is not None and len(schools):
        for school in schools.to_dict("records"):
            urns.setdefault(_key(school), set()).add(str(school["school_urn"]))
            if school.get("blanked") in (True, 1):  # its figures are not published: never named (docs/methods.md)
                blanked.setdefault(_key(school), set()).add(str(school["school_urn"]))
    rows = []
    for record in table.to_dict("records"):
        row = {k: _plain(v) for k, v in record.items()}
        if schools is not None:
            row["school_urns"] = " ".join(sorted(urns.get(_key(row), set())))
            if blanked.get(_key(row)):
                row["schools_blanked"] = " ".join(sorted(blanked[_key(row)]))
        left = sorted(u for u, trial in (withdrawn or ()) if trial == _key(row)[0])
        if left:
            row["withdrawn_urns"] = " ".join(left)
        rows.append(row)
    return rows


def _figures(row: Mapping[str, object]) -> str:
    """A row's content without the bookkeeping and blank cells (what two publications are compared on;
    history rows of different publications share one frame, so a column a row never had is blank)."""
    def same(v: object) -> object:  # 3.0 and 3 are one figure (a frame turns ints with blanks into floats)
        return int(v) if isinstance(v, float) and v.is_integer() else v
    return json.dumps({k: same(v) for k, v in ((k, _plain(v)) for k, v in row.items())
                       if k not in BOOKKEEPING and v is not None},
                      sort_keys=True, default=str)


def publication_frame(table: pd.DataFrame, published_at: datetime, schools: pd.DataFrame | None = None,
                      withdrawn: set[tuple[str, str]] | None = None, correction: str | None = None) -> pd.DataFrame:
    """One publication as :func:`read_history` returns it (publication_id, published_at, the rows
    with ``school_urns``), before it is stored: so a page can show the history including itself.
    ``correction`` (the officer's words, ``microtrials run --correction``) marks the publication as one."""
    rows = _with_correction(_publication_rows(table, schools, withdrawn), correction)
    publication_id = _publication_id(rows, published_at)
    return pd.DataFrame([{"publication_id": publication_id, "published_at": published_at, **r} for r in rows])


def _publication_id(rows: list[dict], published_at: datetime) -> str:
    body = json.dumps(rows, sort_keys=True, default=str)
    return f"{published_at.isoformat(timespec='seconds')}/{hashlib.sha256(body.encode()).hexdigest()[:8]}"


def same_as_latest(history: pd.DataFrame, table: pd.DataFrame, schools: pd.DataFrame | None = None,
                   withdrawn: set[tuple[str, str]] | None = None) -> bool:
    """Whether ``table`` (with its schools) holds exactly the rows of the latest kept publication.

    A run that changes nothing publishes again (new run date) but adds no history entry, so the
    cumulative plot gains a point only when a figure, a school or a status changed.
    """
    kept = publications(history)
    if not kept:
        return False
    latest = [_figures(r) for r in kept[-1].to_dict("records")]
    current = [_figures(r) for r in _publication_rows(table, schools, withdrawn)]
    return sorted(latest) == sorted(current)


def _with_correction(rows: list[dict], correction: str | None) -> list[dict]:
    """The rows, each carrying the officer's correction note when the run was marked as one."""
    text = " ".join(str(correction or "").split())
    return [{**r, CORRECTION: text} for r in rows] if text else rows


def append_history(con: duckdb.DuckDBPyConnection, table: pd.DataFrame, published_at: datetime,
                   schools: pd.DataFrame | None = None, withdrawn: set[tuple[str, str]] | None = None,
                   correction: str | None = None) -> str:
    """Append every row of a published evidence table to ``evidence_history``; return the publication id.

    The id is ``<published_at ISO>/<first 8 hex of sha256 of the rows>``; appending the same
    publication again replaces its rows (idempotent). ``schools`` (optional: intervention,
    outcome_measure, [round], school_urn -- the school_results rows) adds each row's
    ``school_urns`` (sorted, space-separated), so :func:`what_changed` can name new schools;
    ``correction`` marks the publication as the officer's correction (see :func:`evidence_points`).
    """
    ensure_tables(con)
    rows = _with_correction(_publication_rows(table, schools, withdrawn), correction)
    publication_id = _publication_id(rows, published_at)
    frame = pd.DataFrame({
        "publication_id": publication_id,
        "published_at": [published_at] * len(rows),
        "intervention": [str(r.get("intervention") or "") for r in rows],
        "outcome_measure": [str(r.get("outcome_measure") or "") for r in rows],
        "round": [None if r.get("round") in (None, "") else str(r["round"]) for r in rows],
        "row_json": [json.dumps(r, sort_keys=True, default=str) for r in rows],
    })
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(warehouse.sql("delete_evidence_history"), {"publication_id": publication_id})
        con.register("history_frame", frame)
        con.execute(warehouse.sql("insert_evidence_history"))
        con.execute("COMMIT")
    except Exception:
        warehouse.rollback(con)
        raise
    finally:
        try:
            con.unregister("history_frame")
        except Exception:
            pass
    return publication_id


@dataclasses.dataclass
class Earlier:
    """What disclosure control must know of earlier publications (kept in ``disclosure_states``):
    the last value shown of every count, and the counts and sums of every earlier publication (and
    of any staged after the last, which a run may have swapped in before dying)."""

    shown: dict[tuple, float] = dataclasses.field(default_factory=dict)
    states: list[dict] = dataclasses.field(default_factory=list)


def keep_disclosure_state(con: duckdb.DuckDBPyConnection, run_id: str, staged_at: datetime, state: dict,
                          shown: Mapping[tuple, float]) -> None:
    """Keep a staged publication's disclosure ``state`` (``disclosure.state``) and the last value shown
    of every count (``shown``), unconfirmed until :func:`confirm_disclosure_state` (one transaction)."""
    ensure_tables(con)
    shown_json = json.dumps([[list(k), v] for k, v in shown.items()])
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(warehouse.sql("delete_disclosure_state"), {"run_id": run_id})
        con.execute(warehouse.sql("insert_disclosure_state"), {
            "run_id": run_id, "staged_at": staged_at, "state_json": json.dumps(state), "shown_json": shown_json})
        con.execute("COMMIT")
    except Exception:
        warehouse.rollback(con)
        raise


def confirm_disclosure_state(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    """The run's publication was swapped in: the next one is audited against its state."""
    ensure_tables(con)
    con.execute(warehouse.sql("confirm_disclosure_state"), {"run_id": run_id})


def earlier_disclosure(con: duckdb.DuckDBPyConnection) -> Earlier:
    """The disclosure states the next publication is audited against (:class:`Earlier`)."""
    ensure_tables(con)
    earlier = Earlier()
    for _, latest, state_json, shown_json in con.execute(warehouse.sql("disclosure_states")).fetchall():
        earlier.states.append(json.loads(state_json))
        if latest:  # a count shown by a publication never swapped in is no earlier value to compare with
            earlier.shown = {tuple(k): v for k, v in json.loads(shown_json)}
    return earlier


def read_history(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Every history row expanded: publication_id, published_at, then the row as published."""
    ensure_tables(con)
    stored = con.execute(warehouse.sql("evidence_history")).df()
    if stored.empty:
        return pd.DataFrame(columns=["publication_id", "published_at", *KEY_COLUMNS])
    rows = [{"publication_id": p, "published_at": t, **json.loads(j)}
            for p, t, j in zip(stored["publication_id"], stored["published_at"], stored["row_json"])]
    return pd.DataFrame(rows)


def publications(history: pd.DataFrame) -> list[pd.DataFrame]:
    """The history split per publication, oldest first."""
    if history.empty:
        return []
    order = history.drop_duplicates("publication_id").sort_values(["published_at", "publication_id"])
    return [history[history["publication_id"] == pid].reset_index(drop=True) for pid in order["publication_id"]]


# ---------------------------------------------------------------------------------------------
# What changed, in words


def _records(rows: pd.DataFrame | Iterable[Mapping[str, object]] | None) -> list[dict]:
    if rows is None:
        return []
    if isinstance(rows, pd.DataFrame):
        return [{k: _plain(v) for k, v in r.items()} for r in rows.to_dict("records")]
    return [dict(r) for r in rows]


def _label(row: Mapping[str, object]) -> str:
    parts = [str(row.get("outcome_measure") or "")]
    if row.get("round"):
        parts.append(str(row["round"]))
    return f"{row.get('intervention')} ({', '.join(p for p in parts if p)})"


def _months_text(months: object) -> str:
    if months is None:
        return "no estimate"
    m = int(months)  # type: ignore[arg-type]
    return f"{m:+d} month{'s' if abs(m) != 1 else ''}" if m else "0 months"


def _months_of(row: Mapping[str, object]) -> int | None:
    months = row.get("months_progress")
    if months is None and row.get("effect_size") is not None:
        months = months_progress(float(row["effect_size"]))  # type: ignore[arg-type]
    return None if months is None else int(months)  # type: ignore[arg-type]


def _urn_list(text: object) -> set[str]:
    return set(str(text).split()) if text else set()


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _provisional(row: Mapping[str, object]) -> str:
    return " (provisional)" if str(row.get("status")).strip() == "interim" else ""


def _published_name(row: Mapping[str, object]) -> str | None:
    name = row.get(PUBLISHED_AS) or row.get("intervention")
    return None if _plain(name) is None else str(name)


def _renamed(old: Mapping[str, object], row: Mapping[str, object]) -> str:
    """'renamed from "Old" in the registry' when the row was published under another name before
    (:func:`as_registered` keeps it), else ""."""
    before, now = _published_name(old), _published_name(row)
    if before is None or now is None or match_key(before) == match_key(now):
        return ""
    return f'renamed from "{before}" in the registry'


def _without_names(row: Mapping[str, object]) -> dict:
    """The row without its names (compared by match key, or said as a rename)."""
    return {k: v for k, v in row.items() if k not in ("intervention", "outcome_measure", "round", PUBLISHED_AS)}


def _other_change(old: Mapping[str, object], row: Mapping[str, object]) -> list[str]:
    """When schools, months, strength and status are as they were but the published figures are not
    (a school's corrected file, a registry change, a recalculation): the history table's reason for the
    new point (:func:`point_reason`) and the confidence interval's move, so "what changed" never says
    nothing while the history gains a row."""
    old, row = _without_names(old), _without_names(row)  # matched by match_key: a respelling is no change
    if _figures(old) == _figures(row):
        return []
    clause = point_reason(old, row, set())
    before, after = interval(old.get("ci_low"), old.get("ci_high")), interval(row.get("ci_low"), row.get("ci_high"))
    if before != after:
        clause += f": 95% confidence interval {before or 'none'} \u2192 {after or 'none'}"
    return [clause]


def _row_changes(old: Mapping[str, object], row: Mapping[str, object]) -> list[str]:
    """What :func:`what_changed` says of one row in two publications: schools joined or gone, the
    estimate's move, the evidence strength and the status (empty when none of these changed)."""
    clauses = []
    new_urns = sorted(_urn_list(row.get("school_urns")) - _urn_list(old.get("school_urns")))
    gone_urns = sorted(_urn_list(old.get("school_urns")) - _urn_list(row.get("school_urns")))
    # a school whose figures are blanked (a group under 10, or protecting one) is counted, never named
    joined_unnamed = len([u for u in new_urns if u in _urn_list(row.get("schools_blanked"))])
    left_unnamed = len([u for u in gone_urns if u in _urn_list(old.get("schools_blanked"))])
    hidden = joined_unnamed + left_unnamed
    new_urns = [u for u in new_urns if u not in _urn_list(row.get("schools_blanked"))]
    gone_urns = [u for u in gone_urns if u not in _urn_list(old.get("schools_blanked"))]
    if new_urns:
        clauses.append(f"school{'s' if len(new_urns) > 1 else ''} {_join(new_urns)} joined")
    if joined_unnamed:
        clauses.append(f"{'a school' if joined_unnamed == 1 else f'{joined_unnamed} schools'} joined")
    left = [u for u in gone_urns if u in _urn_list(row.get("withdrawn_urns"))]
    gone_urns = [u for u in gone_urns if u not in left]
    if left:
        clauses.append(f"school{'s' if len(left) > 1 else ''} {_join(left)} withdrawn")
    if gone_urns:
        clauses.append(f"school{'s' if len(gone_urns) > 1 else ''} {_join(gone_urns)} no longer counted")
    if left_unnamed:
        clauses.append(f"{'a school' if left_unnamed == 1 else f'{left_unnamed} schools'} no longer counted")
    if not new_urns and not gone_urns and not left and not hidden and row.get("schools") != old.get("schools") \
            and row.get("schools") is not None:
        clauses.append(f"schools {old.get('schools')} → {row.get('schools')}")
    m_old, m_new = _months_of(old), _months_of(row)
    if m_old != m_new:
        effect = ""
        if old.get("effect_size") is not None and row.get("effect_size") is not None:
            effect = f" (effect size {float(old['effect_size']):.2f} → {float(row['effect_size']):.2f})"
        moved = f"the estimate moved from {_months_text(m_old)} to {_months_text(m_new)}{effect}"
        if clauses:
            clauses[-1] += ", so " + moved
        else:
            clauses.append(moved)
    s_old = shown_strength(old.get("evidence_strength"), old.get("status"))
    s_new = shown_strength(row.get("evidence_strength"), row.get("status"))
    if s_old != s_new:  # as the pages show it: an interim result's capped
        clauses.append(f"evidence strength {'-' if s_old is None else s_old} → {'-' if s_new is None else s_new}"
                       + _provisional(row))
    if old.get("status") != row.get("status") and row.get("status") is not None:
        clauses.append(f"status {old.get('status') or '-'} → {row.get('status')}")
    return clauses


def what_changed(previous_rows: pd.DataFrame | Iterable[Mapping[str, object]] | None,
                 current_rows: pd.DataFrame | Iterable[Mapping[str, object]]) -> list[str]:
    """One plain sentence per trial row that changed between two publications (none when nothing did).

    Rows are matched by (intervention, outcome_measure, round) match keys. A sentence names new
    or departed schools (by URN, from ``school_urns`` when the history kept them, else the count),
    a move in months of progress ("moved from +2 to +3 months, effect size 0.17 -> 0.21"), an
    evidence-strength change as the pages show it ("strength 2 -> 4", an interim result's capped:
    :func:`microtrials.publish.views.shown_strength`) and a status change ("status interim ->
    published"); with none of these but other figures, the history's reason and the interval's move
    (:func:`_other_change`). A row new to the table says "first published"; a row gone says so.
    A row of a trial the registry renamed (:func:`as_registered`, old name kept as an alias) starts
    'renamed from "Old" in the registry'.
    """
    before = {_key(r): r for r in _records(previous_rows)}
    after = {_key(r): r for r in _records(current_rows)}
    sentences = []
    for key, row in after.items():
        old = before.get(key)
        label = _label(row)
        if old is None:
            strength = shown_strength(row.get("evidence_strength"), row.get("status"))
            sentences.append(f"{label}: first published, {_months_text(_months_of(row))}"
                             + (f", evidence strength {strength} of 5{_provisional(row)}." if strength is not None
                                else "."))
            continue
        renamed = _renamed(old, row)
        clauses = [renamed] * bool(renamed) + (_row_changes(old, row) or _other_change(old, row))
        if clauses:
            sentences.append(f"{label}: {'; '.join(clauses)}.")
    for key, old in before.items():
        if key not in after:
            sentences.append(f"{_label(old)}: no longer in the evidence table.")
    return sentences


# ---------------------------------------------------------------------------------------------
# Cumulative meta-analysis plot


def _escape(text: str) -> str:
    """Text matplotlib draws literally: '$' escaped so it never starts math text."""
    return str(text).replace("$", r"\$")


def _matching(history: pd.DataFrame, intervention: str, outcome_measure: str, round_name: str | None) -> pd.DataFrame:
    """The row's evidence points (:func:`evidence_points`): what the page, the table and the plot show."""
    return evidence_points(history, intervention, outcome_measure, round_name)


def _count(n: int, one: str, many: str) -> str:
    return one if n == 1 else f"{n} {many}"


def point_reason(before: Mapping[str, object] | None, row: Mapping[str, object], seen: set[str]) -> str:
    """Why a row's figures changed, in one phrase: "3 schools added", "a school rejoined", "a school
    withdrawn" (``microtrials withdraw``; else "no longer counted"), "registry changed", "all schools' results in", "a school's corrected file" (same schools, other pupil numbers), "figures
    recalculated (same schools and pupils)" (a corrected score or a change in the analysis), or the
    officer's "correction: ..." (``seen``: every school counted in an earlier point). A trial the
    registry renamed (:func:`as_registered`) says 'renamed from "Old" in the registry' first."""
    if row.get(CORRECTION):
        return f"correction: {row[CORRECTION]}"
    if before is None:
        return "first published"
    renamed = _renamed(before, row)
    if renamed:
        a, b = _without_names(before), _without_names(row)
        return renamed if _figures(a) == _figures(b) else f"{renamed}; {point_reason(a, b, seen)}"
    old, new = _urn_list(before.get("school_urns")), _urn_list(row.get("school_urns"))
    added, gone = new - old, old - new
    parts = []
    if added - seen:
        parts.append(_count(len(added - seen), "a school added", "schools added"))
    if added & seen:
        parts.append(_count(len(added & seen), "a school rejoined", "schools rejoined"))
    left = {u for u in gone if u in _urn_list(row.get("withdrawn_urns"))}
    if left:
        parts.append(_count(len(left), "a school withdrawn", "schools withdrawn"))
    if gone - left:
        parts.append(_count(len(gone - left), "a school no longer counted", "schools no longer counted"))
    if parts:
        return ", ".join(parts)
    a, b = json.loads(_figures(before)), json.loads(_figures(row))
    changed = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    if changed and changed <= REGISTRY_FIGURES:
        return "registry changed"
    if before.get("status") == "interim" and row.get("status") == "published":
        return "all schools' results in"
    if "school_urns" not in a and a.get("schools") != b.get("schools"):
        return f"schools {a.get('schools')} \u2192 {b.get('schools')}"
    if any(a.get(k) != b.get(k) for k in ("pupils_randomised", "pupils_analysed")):
        return "a school's corrected file"  # the same schools sent other pupils or results
    # Same schools and pupils: a corrected score or a change in the analysis; the history cannot tell which.
    return "figures recalculated (same schools and pupils)"


def evidence_points(history: pd.DataFrame, intervention: str, outcome_measure: str,
                    round_name: str | None) -> pd.DataFrame:
    """The row at each publication that changed its own published figures, oldest first, with a
    ``reason`` column (:func:`point_reason`).

    A publication where the row is as it was (another trial changed) is no point; nor is one the
    row is missing from. A publication marked as a correction replaces the row's point before it
    (the figures it corrected), and is no point at all when it restores the figures before that.
    """
    wanted = (match_key(intervention), match_key(outcome_measure), match_key(round_name or ""))
    if not len(history):
        return history.assign(reason=pd.Series(dtype=object))
    rows = history[[_key(r) == wanted for r in history.to_dict("records")]]
    rows = rows.sort_values(["published_at", "publication_id"])
    points: list[dict] = []
    for record in rows.to_dict("records"):
        record = {k: _plain(v) for k, v in record.items()}
        if points and _figures(record) == _figures(points[-1]):
            continue
        if record.get(CORRECTION) and points:
            points.pop()  # the figures it corrected
            if points and _figures(record) == _figures(points[-1]):
                continue
        points.append(record)
    seen: set[str] = set()
    for i, point in enumerate(points):
        point["reason"] = point_reason(points[i - 1] if i else None, point, seen)
        seen |= _urn_list(point.get("school_urns"))
    return pd.DataFrame(points, columns=list(rows.columns) + ["reason"]).reset_index(drop=True)


def describe_cumulative(history: pd.DataFrame, intervention: str, outcome_measure: str,
                        round_name: str | None = "all rounds") -> str:
    """The cumulative plot's alt text: how the estimate moved from the first to the latest publication."""
    rows = _matching(history, intervention, outcome_measure, round_name)
    rows = rows[pd.to_numeric(rows.get("effect_size", pd.Series(dtype=float)), errors="coerce").notna()] if len(rows) else rows
    if not len(rows):
        return f"No published estimate yet for {intervention} ({outcome_measure})."
    first, last = rows.iloc[0], rows.iloc[-1]

    def said(row) -> str:
        ci = ""
        if pd.notna(row.get("ci_low")) and pd.notna(row.get("ci_high")):
            ci = f" (95% CI {float(row['ci_low']):.2f} to {float(row['ci_high']):.2f})"
        return f"{float(row['effect_size']):.2f}{ci} on {pd.Timestamp(row['published_at']).strftime('%d %b %Y')}"

    if len(rows) == 1:
        return f"Estimate for {intervention} ({outcome_measure}) at its one publication: {said(first)}."
    return (f"Estimate for {intervention} ({outcome_measure}) over {len(rows)} publications: "
            f"{said(first)}, then {said(last)}.")


def _cumulative_figure(history: pd.DataFrame, intervention: str, outcome_measure: str,
                       round_name: str | None) -> Figure:
    """The cumulative meta-analysis plot of one trial row as a matplotlib Figure (see :func:`cumulative_plot_png`)."""
    rows = _matching(history, intervention, outcome_measure, round_name)
    # 5.5 x 3.4 in: narrow enough that its text stays readable when a phone shrinks it to 360 px
    fig = Figure(figsize=(5.5, 3.4), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    g = pd.to_numeric(rows.get("effect_size", pd.Series(dtype=float)), errors="coerce").to_numpy(dtype=float)
    lo = pd.to_numeric(rows.get("ci_low", pd.Series(dtype=float)), errors="coerce").to_numpy(dtype=float)
    hi = pd.to_numeric(rows.get("ci_high", pd.Series(dtype=float)), errors="coerce").to_numpy(dtype=float)
    shown = ~np.isnan(g) if len(rows) else np.array([], dtype=bool)
    if shown.any():
        ax.vlines(x[shown], lo[shown], hi[shown], color=ESTIMATE_COLOUR, linewidth=1.6)
        ax.plot(x[shown], g[shown], marker="o", color=ESTIMATE_COLOUR, linewidth=1, label="Estimate (95% CI)")
        schools = rows.get("schools", pd.Series([None] * len(rows))).tolist()
        tops = np.where(np.isnan(hi), g, hi)
        for xi, top, n in zip(x[shown], tops[shown], [s for s, ok in zip(schools, shown) if ok]):
            if n is not None and not (isinstance(n, float) and math.isnan(n)):  # above the interval, centred
                ax.annotate(f"{int(n)} schools", (xi, top), textcoords="offset points", xytext=(0, 3),
                            ha="center", va="bottom", fontsize=8, color=INK)
        ax.margins(y=0.18)
    else:
        ax.text(0.5, 0.5, "no published estimate yet", ha="center", va="center", transform=ax.transAxes, color=INK)
    ax.axhline(0.0, color=GRID_COLOUR, linewidth=1)
    labels = [pd.Timestamp(t).strftime("%d %b %Y") for t in rows.get("published_at", [])]
    if len(set(labels)) < len(labels):  # several publications on one day: add the time
        labels = [pd.Timestamp(t).strftime("%d %b %H:%M") for t in rows.get("published_at", [])]
    ax.set_xticks(list(x), [_escape(label) for label in labels])
    if len(labels) > 3:  # many publications: slanted dates do not overlap
        ax.tick_params(axis="x", labelrotation=40, labelsize=8)
    if len(rows):
        ax.set_xlim(-0.5, len(rows) - 0.5)
    ax.set_ylabel("Effect size (Hedges' g)")
    ax.set_xlabel("Publication")
    title = f"{intervention} ({outcome_measure}{', ' + round_name if round_name else ''})"
    ax.set_title(_escape(title), loc="left", color=INK, fontsize=10, wrap=True)
    ax.grid(axis="y", color="#d0d0d0", linewidth=0.6)
    ax.set_axisbelow(True)
    return fig


def cumulative_plot_png(history: pd.DataFrame, intervention: str, outcome_measure: str,
                        round_name: str | None = "all rounds", dpi: int = 110) -> bytes:
    """PNG bytes: the estimate (effect size, 95% CI) of one trial row at each publication, oldest left.

    ``history`` is :func:`read_history` (or any frame with publication_id, published_at,
    intervention, outcome_measure, round, effect_size, ci_low, ci_high, schools). Rows match by
    :func:`names.match_key`; ``round_name`` None takes rows with no round. Points are labelled with
    the number of schools, so a reader sees the interval narrow as schools join (a cumulative
    meta-analysis plot, publication by publication).
    """
    buffer = io.BytesIO()
    _cumulative_figure(history, intervention, outcome_measure, round_name).savefig(
        buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()


def cumulative_plot_svg(history: pd.DataFrame, intervention: str, outcome_measure: str,
                        round_name: str | None = "all rounds") -> bytes:
    """The same plot as :func:`cumulative_plot_png`, as SVG for the page (text kept as text,
    no date stamp, fixed ids: the same history gives the same bytes)."""
    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "microtrials", "svg.fonttype": "none", "font.size": 10,
                                "text.parse_math": False}):
        _cumulative_figure(history, intervention, outcome_measure, round_name).savefig(
            buffer, format="svg", metadata={"Date": None, "Creator": None})
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# One trial row's history, for the page and the UI


@dataclasses.dataclass(frozen=True)
class TrialHistory:
    """One trial row's publications (oldest first) and what changed at the latest one, in words."""

    rows: pd.DataFrame            # that row at each publication it was in
    publications: int             # publications kept in all (the row may be in fewer)
    changes: list[str]            # what_changed between the previous publication and the latest
    alt: str                      # describe_cumulative
    changed_now: bool = False     # the latest publication changed this row (its last point is from it)


def trial_history(history: pd.DataFrame | None, intervention: str, outcome_measure: str,
                  round_name: str | None) -> TrialHistory:
    """The history of one evidence-table row, keyed by (intervention, outcome_measure, round or blank).

    ``rows`` are its evidence points (:func:`evidence_points`); ``changes`` compares its last two
    points when the latest publication made the last one (its first point is "first published");
    empty when the latest publication left the row as it was.
    """
    if history is None or history.empty:
        return TrialHistory(pd.DataFrame(), 0, [], "")
    kept = publications(history)
    rows = _matching(history, intervention, outcome_measure, round_name)
    changes: list[str] = []
    latest_id = kept[-1]["publication_id"].iloc[0] if kept else None
    if len(rows) >= 2 and rows["publication_id"].iloc[-1] == latest_id:
        records = _records(rows.drop(columns="reason"))
        changes = what_changed(records[-2:-1], records[-1:])
    return TrialHistory(rows.reset_index(drop=True), len(kept), changes,
                        describe_cumulative(history, intervention, outcome_measure, round_name),
                        changed_now=bool(len(rows)) and rows["publication_id"].iloc[-1] == latest_id)
