"""Change sets: what a delivery does to each (school, trial, round) of the warehouse, held or applied, recorded."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime

import duckdb
import pandas as pd
import pyarrow as pa

from microtrials.ingest import warehouse
from microtrials.ingest.trial_key import TrialKey, TrialKeys, from_warehouse, plain_key
from microtrials.publish.views import day

APPLIED, HELD, ACCEPTED, WITHDRAWN = "applied", "held", "accepted", "withdrawn"
COMBO = ["school_urn", "intervention", "outcome_measure", "round"]


@dataclass
class ChangeSet:
    """What one delivery (or a withdrawal) does to one school's trial round, in numbers and one line."""

    school_urn: str
    key: TrialKey
    intervention: str  # as the officer reads it: the registered name, else the spelling delivered
    outcome_measure: str
    round: str  # the registered round, else the round sent, else ''
    delivery_id: str | None = None  # sha256 of the delivered file (None for a withdrawal)
    file_name: str | None = None
    pupils_before: int = 0
    pupils_after: int = 0
    outcomes_before: int = 0
    outcomes_after: int = 0
    added: int = 0
    removed: int = 0
    scores_changed: int = 0  # pupils kept whose outcome score differs (a score given, blanked or changed)
    arms_changed: int = 0  # pupils kept whose arm differs
    baselines_changed: int = 0  # pupils kept whose baseline score differs
    details_changed: int = 0  # pupils kept whose fsm, gender, year_group or send differs
    state: str = APPLIED
    reason: str = ""  # why it is held
    withdrawn_on: datetime | None = None  # held because the school was withdrawn from this trial round then
    withdrawn_whole: bool = False  # ... by a withdrawal of the whole school (every trial and round)
    show_measure: bool = False  # the delivery holds several outcome measures of this trial round

    @property
    def label(self) -> str:
        """'222005 Café Readers 2026 Autumn' (with the outcome measure when the trial has several)."""
        text = " ".join(p for p in (self.school_urn, self.intervention, self.round) if p)
        return f"{text} ({self.outcome_measure})" if self.show_measure else text

    @property
    def trial(self) -> str:
        """'Café Readers / NGRT / 2026 Autumn': the trial round without the school."""
        return " / ".join(p for p in (self.intervention, self.outcome_measure, self.round) if p)

    @property
    def message(self) -> str:
        """The change in one plain line for the officer (run summary, load report, Dagster metadata)."""
        before, after = _pupils(self.pupils_before), _pupils(self.pupils_after)
        if self.state == WITHDRAWN:
            return f"{self.label}: withdrawn, {before} removed"
        if self.state == HELD:
            kept = "it stays withdrawn" if self.withdrawn_on else f"the earlier {before} stay as they were"
            return f"{self.label}{HELD_MARK}{self.reason}; {kept} ({self.how_to_accept})"
        if self.pupils_before == 0:
            text = f"{self.label}: {after} added"
        else:
            text = f"{self.label}: {before} replaced by {self.pupils_after} ({self.detail})"
        return text + ("; accepted by the officer" if self.state == ACCEPTED else "")

    @property
    def detail(self) -> str:
        """'1 added, 2 removed; 3 outcome scores changed; outcome scores 58 -> 60' (the totals told
        when they move otherwise than the pupils), 'the same pupils; 12 outcome scores changed; 20 arms
        changed', or 'the same pupils and scores' (nothing changed)."""
        parts = [f"{n} {what}" for n, what in ((self.added, "added"), (self.removed, "removed")) if n]
        text = ", ".join(parts) or "the same pupils"
        changed = [f"{n} {one if n == 1 else many} changed" for n, one, many in (
            (self.scores_changed, "outcome score", "outcome scores"), (self.arms_changed, "arm", "arms"),
            (self.baselines_changed, "baseline score", "baseline scores"),
            (self.details_changed, "pupil's other details", "pupils' other details")) if n]
        if changed:
            text += "; " + "; ".join(changed)
        elif not parts:
            text += " and scores"
        scores = (self.outcomes_before, self.outcomes_after)
        if scores[0] != scores[1] and scores != (self.pupils_before, self.pupils_after):  # not just the pupils'
            text += f"; outcome scores {scores[0]} -> {scores[1]}"
        return text

    @property
    def how_to_accept(self) -> str:
        """'to apply it on purpose: microtrials accept F' ('to bring the school back: ...' when withdrawn)."""
        why = "to bring the school back" if self.withdrawn_on else "to apply it on purpose"
        return f"{why}: microtrials accept {self.file_name}"

    def school_text(self, rows_set_aside: bool) -> str:
        """Why the change was held and what to do, as the school's feedback file says it."""
        if self.withdrawn_on:
            fix = HOLD_FIX_WITHDRAWN_WHOLE if self.withdrawn_whole else HOLD_FIX_WITHDRAWN
            return f"held, not loaded: {withdrawn_text(self.withdrawn_on, self.withdrawn_whole)}; {fix} ({self.how_to_accept})"
        action = (HOLD_FIX_ROWS if rows_set_aside else HOLD_FIX_LEFT)
        return f"held, not applied: {self.reason}, so the earlier rows stay as they were; {action}"

    def row(self) -> dict:
        """The ``change_sets`` row (the time is the warehouse's)."""
        fields = asdict(self)
        key = fields.pop("key")
        fields.pop("show_measure")
        fields.pop("withdrawn_on")
        fields.pop("withdrawn_whole")
        return fields | {"key_intervention": key["intervention"], "key_outcome_measure": key["outcome_measure"],
                         "key_round": key["round"], "message": self.message}


def _pupils(n: int) -> str:
    return f"{n} pupil{'' if n == 1 else 's'}"


def hold_reason(pupils_before: int, pupils_after: int, outcomes_before: int, outcomes_after: int,
                removed: int, added: int) -> str:
    """Why a change would be held ('' when it may be applied): it would lose more than half of the
    school's pupils, or of its outcome scores, for that trial round (exactly half may go). Pupils
    lost are the stored pupils the file leaves out (``removed``), whatever it adds: 20 pupils
    replaced by 20 others (another class sent by mistake) lose all 20."""
    if 2 * pupils_after < pupils_before:
        return f"it would replace {_pupils(pupils_before)} by {pupils_after}, more than half of them gone"
    if 2 * removed > pupils_before:
        others = f" (and add {added} other{'' if added == 1 else 's'})" if added else ""
        return f"it would remove {removed} of the {_pupils(pupils_before)} stored{others}, more than half of them gone"
    if 2 * outcomes_after < outcomes_before:
        return (f"it would leave {outcomes_after} of the {outcomes_before} outcome scores, more than half "
                "of them gone")
    return ""


def withdrawn_text(withdrawn_on: datetime, whole: bool = False) -> str:
    """'the school was withdrawn from this trial on 7 December 2026' ('... from the network ...' when
    the whole school was): why a later file of the school carrying rows for a trial round the withdrawal
    covers is held, whatever its bytes (the officer's line adds the command)."""
    return f"the school was withdrawn from {'the network' if whole else 'this trial'} on {day(withdrawn_on)}"


# How a held change reads (the marker finds the held lines of a stored report), and what the school can do.
HELD_MARK = ": held, not applied: "
HOLD_FIX_ROWS = "see the rows set aside and why, correct them and send the file again"
HOLD_FIX_WITHDRAWN = ("if the school takes part in this trial again, tell the data team, who can load the file "
                      "on purpose")
HOLD_FIX_WITHDRAWN_WHOLE = ("if the school takes part in the network's trials again, tell the data team, who can "
                            "load the file on purpose")
HOLD_FIX_LEFT = ("check the file holds every pupil randomised and every score, and send it again; if pupils "
                 "really left the trial, tell the data team, who can apply the file on purpose")


REPLACE_SCHEMA = pa.schema([(c, pa.string()) for c in COMBO])
INSERT_SCHEMA = pa.schema([(c, pa.string()) for c in ("file_name", *COMBO[1:], "key_round")])


@dataclass
class Plan:
    """A group of deliveries' change sets and the rows they replace: stored combinations to delete
    (``replace``: school_urn, intervention, outcome_measure, round) and delivered combinations to
    insert (``insert``: file_name, intervention, outcome_measure, round, and the trial key's round
    resolved now, which the inserted rows keep as ``key_round``)."""

    change_sets: list[ChangeSet] = field(default_factory=list)
    replace: pa.Table = field(default_factory=REPLACE_SCHEMA.empty_table)
    insert: pa.Table = field(default_factory=INSERT_SCHEMA.empty_table)


def stored_rows(con: duckdb.DuckDBPyConnection, schools: list[str]) -> list[tuple]:
    """The warehouse's pupil rows of these schools: (school_urn, intervention, outcome_measure,
    round ('' for none), pupil_key, outcome, key_round (the key's round at load; None for older rows))."""
    with_schools = pa.table({"school_urn": pa.array(sorted(set(schools)), pa.string())})
    con.register("batch_schools", with_schools)
    try:
        return con.execute(warehouse.sql("school_rows")).fetchall()
    finally:
        con.unregister("batch_schools")


class _Keyed:
    """Trial keys of delivered combinations, worked out once each, with the names the officer reads."""

    def __init__(self, keys: TrialKeys) -> None:
        self.keys = keys
        self.names: dict[tuple[str, TrialKey], tuple[str, str, str]] = {}
        self._cache: dict[tuple, TrialKey] = {}

    def __call__(self, school: str, intervention: str, measure: str, round_sent: str | None) -> TrialKey:
        combo = (school, intervention, measure, round_sent or "")
        key = self._cache.get(combo)
        if key is None:
            key = self._cache[combo] = self.keys.key(intervention, measure, school, round_sent)
            placed = self.keys.place(intervention, school, round_sent)
            round_name = placed.round.round if placed.round is not None else placed.round_sent
            self.names.setdefault((school, key), (placed.registered_intervention or " ".join(str(intervention).split()),
                                                  " ".join(str(measure).split()), round_name))
        return key


#: The values besides the outcome a redelivery of the same pupils can change, counted and told.
VALUES = ("arm", "baseline", "fsm", "gender", "year_group", "send")


class _Tally:
    """Pupils (by pupil_key, with their outcome score and other values), rows and outcome scores of one
    (school, trial key)."""

    __slots__ = ("outcomes", "rows", "scores", "values")

    def __init__(self) -> None:
        self.outcomes: dict[str, float | None] = {}
        self.values: dict[str, tuple] = {}
        self.rows = 0
        self.scores = 0

    @property
    def pupils(self) -> set[str]:
        return set(self.outcomes)

    def add(self, pupil: str, outcome: float | None, values: tuple = ()) -> None:
        scored = _scored(outcome)
        self.outcomes[pupil] = outcome if scored else None
        self.values[pupil] = tuple(v if _scored(v) else None for v in values)
        self.rows += 1
        self.scores += scored

    def scores_changed(self, earlier: _Tally) -> int:
        """Pupils in both whose outcome score differs (given, blanked or another value)."""
        return sum(1 for pupil, score in self.outcomes.items()
                   if pupil in earlier.outcomes and earlier.outcomes[pupil] != score)

    def values_changed(self, earlier: _Tally, first: int, last: int) -> int:
        """Pupils in both whose :data:`VALUES` ``first`` to ``last`` (inclusive) differ."""
        return sum(1 for pupil, values in self.values.items() if pupil in earlier.values
                   and values[first:last + 1] != earlier.values[pupil][first:last + 1])


def _scored(outcome: object) -> bool:
    return outcome is not None and outcome == outcome  # not NULL, not NaN


def _column(table: pa.Table, name: str) -> list:
    """A column's values, or Nones when the staged rows do not carry it."""
    return table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows


def plan_changes(stored: list[tuple], incoming: pa.Table, keys: TrialKeys, named: list[tuple] = (),
                 accept: bool = False, withdrawn: Withdrawn | None = None) -> Plan:
    """What each delivery would do, per (school, trial key), and the rows to delete and insert.

    ``stored``: :func:`stored_rows` of the deliveries' schools; ``incoming``: the staged rows
    (file_name, delivery_id, school_urn, intervention, outcome_measure, round, pupil_key, outcome;
    at most one file per school). ``named``: (file_name, delivery_id, school_urn, intervention,
    outcome_measure) of trials a file names with no loadable row: it would remove the rows of the
    round the registry places the school in.

    A change set that would lose (remove, whatever it adds) more than half of the school's pupils,
    or more than half of its outcome scores, for its trial round is ``held`` (nothing of it applied), and so is one carrying rows for a
    trial round a withdrawal of its school covers (``withdrawn``, :func:`withdrawals`: every outcome
    measure of it, and for a whole-school withdrawal every trial and round; nothing applied or accepted
    for that trial round since; whatever the file's bytes), unless ``accept``: then the held ones
    are ``accepted`` and applied, and the others are left out (an accept applies what was held only).
    """
    withdrawn = withdrawn or Withdrawn([], {})
    keyed = _Keyed(keys)
    after: dict[tuple, _Tally] = {}
    columns = [incoming.column(c).to_pylist() for c in
               ("file_name", "delivery_id", "school_urn", "intervention", "outcome_measure", "round", "pupil_key", "outcome")]
    values = list(zip(*(_column(incoming, c) for c in VALUES), strict=True))
    for (file_name, delivery_id, school, intervention, measure, round_sent, pupil, outcome), row_values in zip(
            zip(*columns), values, strict=True):
        key = keyed(school, intervention, measure, round_sent)
        after.setdefault((file_name, delivery_id, school, key), _Tally()).add(pupil, outcome, row_values)
    carried = set(zip(columns[0], columns[3], columns[4]))
    for file_name, delivery_id, school, intervention, measure in named:
        if (file_name, intervention, measure) not in carried:
            after.setdefault((file_name, delivery_id, school, keyed(school, intervention, measure, None)), _Tally())
    carried_keys = {(school, key) for _, _, school, key in after}
    stored_keys = [_stored_key(keyed, row, carried_keys) for row in stored]
    before: dict[tuple, _Tally] = {}
    for (school, _, _, _, pupil, outcome, _, *row_values), key in zip(stored, stored_keys):
        before.setdefault((school, key), _Tally()).add(pupil, outcome, tuple(row_values))
    measures: dict[tuple, set[str]] = {}
    for file_name, _, _, key in after:
        measures.setdefault((file_name, key.intervention, key.round), set()).add(key.outcome_measure)
    change_sets = []
    for (file_name, delivery_id, school, key), new in after.items():
        old = before.get((school, key), _Tally())
        if new.rows or old.rows:
            show = len(measures[file_name, key.intervention, key.round]) > 1
            change = _change_set(keyed.names[school, key], file_name, delivery_id, school, key, old, new, show,
                                 accept, withdrawn.held(school, key) if new.rows else None)
            change_sets.append(change)
    if accept:
        change_sets = [c for c in change_sets if c.state == ACCEPTED]
    applied = {(c.file_name, c.school_urn, c.key) for c in change_sets if c.state in (APPLIED, ACCEPTED)}
    replaced = {(s, k) for _, s, k in applied}
    replace = {(row[0], row[1], row[2], row[3] or "") for row, key in zip(stored, stored_keys)
               if (row[0], key) in replaced}
    insert = {(f, i, m, r or "", keyed(s, i, m, r).round) for f, _, s, i, m, r in zip(*columns[:6])
              if (f, s, keyed(s, i, m, r)) in applied}
    return Plan(change_sets, _table(replace, REPLACE_SCHEMA), _table(insert, INSERT_SCHEMA))


def _stored_key(keyed: _Keyed, row: tuple, carried: set[tuple[str, TrialKey]]) -> TrialKey:
    """A stored row's trial key: as the current registry resolves it, unless the deliveries carry
    not that key but the one the row was loaded under (``key_round``): a school since planned in a
    second round still has its rows sent without a round replaced by the same round sent."""
    school, intervention, measure, round_sent = row[:4]
    key = keyed(school, intervention, measure, round_sent)
    at_load = row[6] if len(row) > 6 else None
    if at_load is None or at_load == key.round or (school, key) in carried:
        return key
    loaded = TrialKey(key.intervention, key.outcome_measure, at_load)
    return loaded if (school, loaded) in carried else key


def _table(rows: set[tuple], schema: pa.Schema) -> pa.Table:
    """Sorted rows as an Arrow table of ``schema``."""
    ordered = sorted(rows)
    return pa.table({name: pa.array([r[n] for r in ordered], pa.string()) for n, name in enumerate(schema.names)},
                    schema=schema)


def _change_set(names: tuple[str, str, str], file_name: str, delivery_id: str, school: str, key: TrialKey,
                old: _Tally, new: _Tally, show_measure: bool, accept: bool,
                withdrawn: Withdrawal | None) -> ChangeSet:
    """One planned change set, held or not (``withdrawn``: held, a withdrawal of the school covering
    this trial round)."""
    intervention, measure, round_name = names
    added, removed = len(new.pupils - old.pupils), len(old.pupils - new.pupils)
    reason = (f"{withdrawn_text(withdrawn.at, withdrawn.whole)} (microtrials withdraw)" if withdrawn
              else hold_reason(old.rows, new.rows, old.scores, new.scores, removed, added))
    return ChangeSet(
        school_urn=school, key=key, intervention=intervention, outcome_measure=measure, round=round_name,
        delivery_id=delivery_id, file_name=file_name, pupils_before=old.rows, pupils_after=new.rows,
        outcomes_before=old.scores, outcomes_after=new.scores, added=added,
        removed=removed, scores_changed=new.scores_changed(old), arms_changed=new.values_changed(old, 0, 0),
        baselines_changed=new.values_changed(old, 1, 1), details_changed=new.values_changed(old, 2, len(VALUES) - 1),
        state=(ACCEPTED if accept else HELD) if reason else APPLIED,
        reason=reason, withdrawn_on=withdrawn and withdrawn.at, withdrawn_whole=bool(withdrawn and withdrawn.whole),
        show_measure=show_measure,
    )


CHANGE_SET_COLUMNS = [
    "delivery_id", "file_name", "school_urn", "intervention", "outcome_measure", "round", "key_intervention",
    "key_outcome_measure", "key_round", "pupils_before", "pupils_after", "outcomes_before", "outcomes_after",
    "added", "removed", "scores_changed", "arms_changed", "baselines_changed", "details_changed", "state", "reason",
    "message",
]


def change_sets_table(change_sets: list[ChangeSet]) -> pa.Table:
    """The ``change_sets`` rows of these change sets, as the Arrow table ``sql/insert_change_sets.sql`` reads."""
    rows = [c.row() for c in change_sets]
    counts = {"pupils_before", "pupils_after", "outcomes_before", "outcomes_after", "added", "removed",
              "scores_changed", "arms_changed", "baselines_changed", "details_changed"}
    return pa.table({c: pa.array([r[c] for r in rows], pa.int64() if c in counts else pa.string())
                     for c in CHANGE_SET_COLUMNS})


@dataclass(frozen=True)
class Withdrawal:
    """A withdrawal holding a trial round: when it was recorded, and whether of the whole school."""

    at: datetime
    whole: bool


class Withdrawn:
    """The withdrawals recorded (:func:`withdrawals`), each (school, intervention or None for every
    trial, round or None for every round, when), against when each (school, intervention, round)
    last had a change set applied or accepted."""

    def __init__(self, scopes: list[tuple[str, str | None, str | None, datetime]],
                 applied: dict[tuple[str, str, str], datetime]) -> None:
        self.scopes: dict[str, list[tuple[str | None, str | None, datetime]]] = {}
        for school, intervention, round_key, at in scopes:
            self.scopes.setdefault(school, []).append((intervention, round_key, at))
        self.applied = applied

    def held(self, school: str, key: TrialKey) -> Withdrawal | None:
        """The latest withdrawal covering the key's trial round (any outcome measure) recorded after
        anything was last applied or accepted for that trial round; None when there is none."""
        since = self.applied.get((school, key.intervention, key.round))
        covering = [(at, intervention is None and round_key is None)
                    for intervention, round_key, at in self.scopes.get(school, ())
                    if intervention in (None, key.intervention) and round_key in (None, key.round)
                    and (since is None or at > since)]
        return Withdrawal(*max(covering)) if covering else None


def withdrawals(con: duckdb.DuckDBPyConnection) -> Withdrawn:
    """Every withdrawal recorded (``microtrials withdraw``, the officer's explicit choice:
    ``sql/withdrawal_scopes.sql``) and when each school's trial rounds were last applied or accepted
    (``sql/rounds_applied.sql``): the loader holds any later file of the school carrying rows for a
    trial round a withdrawal covers until ``microtrials accept``; an applied or accepted change set of
    a trial round ends the withdrawals of it recorded before."""
    if not warehouse.table_exists(con, "change_sets"):
        return Withdrawn([], {})
    applied = {(school, intervention, round_key): at
               for school, intervention, round_key, at in con.execute(warehouse.sql("rounds_applied")).fetchall()}
    return Withdrawn(con.execute(warehouse.sql("withdrawal_scopes")).fetchall(), applied)


def withdrawn_keys(con: duckdb.DuckDBPyConnection) -> set[tuple[str, TrialKey]]:
    """(school, trial key) of every withdrawn change set (the school's rows removed, ``microtrials
    withdraw``) that no later applied or accepted change set of that key undid
    (``sql/withdrawn_schools.sql``): the plan's progress reads it as "withdrawn", never "awaited"."""
    if not warehouse.table_exists(con, "change_sets"):
        return set()
    return {(school, TrialKey(*key)) for school, *key, _ in con.execute(warehouse.sql("withdrawn_schools")).fetchall()}


def withdrawn_from_plan(con: duckdb.DuckDBPyConnection, rounds: Iterable) -> set[tuple[str, TrialKey]]:
    """:func:`withdrawn_keys`, and each planned school of these registered rounds (``registry.rounds``)
    that a withdrawal in force covers for the round's primary outcome (:func:`withdrawals`: a school
    withdrawn whole, or from the trial, before it sent this round): the plan's progress reads it as
    "withdrawn", not "awaited", since any file it sends for the round is held."""
    found = withdrawn_keys(con)
    held = withdrawals(con)
    for r in rounds:
        key = plain_key(r.intervention, r.outcome_measure, r.round)
        found |= {(str(urn), key) for urn in r.schools if held.held(str(urn), key)}
    return found


def superseded_files(con: duckdb.DuckDBPyConnection, file_names: list[str]) -> dict[str, str]:
    """Of these files, those none of whose applied trial rounds still holds their rows: file name ->
    'withdrawn' (every one withdrawn, ``microtrials withdraw``) or 'replaced' (a later file's change
    set is the latest of at least one) (``sql/superseded_files.sql``). Such a file in the folder is
    not "unchanged since it was last loaded"."""
    if not file_names or not (warehouse.table_exists(con, "change_sets") and warehouse.table_exists(con, "latest_deliveries")):
        return {}
    return dict(con.execute(warehouse.sql("superseded_files"), {"files": list(file_names)}).fetchall())


def with_superseded(con: duckdb.DuckDBPyConnection, report: pd.DataFrame) -> pd.DataFrame:
    """The load report with column ``superseded`` (:func:`superseded_files`; blank for the rest)."""
    found = superseded_files(con, list(report["file_name"].astype(str))) if len(report) else {}
    return report.assign(superseded=report["file_name"].astype(str).map(found).fillna("") if len(report) else "")


def sent_before_withdrawal(con: duckdb.DuckDBPyConnection, delivery_ids: list[str]) -> set[str]:
    """Which of these contents (sha256) were delivered (applied, accepted or held) for a (school, trial
    key) that has since been withdrawn and not delivered again (``sql/sent_contents.sql``): a file of
    such a content, recorded as loaded, is no longer applied, so ``microtrials accept`` reads it again."""
    if not delivery_ids:
        return set()
    withdrawn = withdrawn_keys(con)
    if not withdrawn:
        return set()
    con.register("batch_ids", pa.table({"delivery_id": pa.array(sorted(set(delivery_ids)), pa.string())}))
    try:
        sent = con.execute(warehouse.sql("sent_contents")).fetchall()
    finally:
        con.unregister("batch_ids")
    return {delivery_id for delivery_id, school, *key in sent if (school, TrialKey(*key)) in withdrawn}


def withdrawal_scope(keys: TrialKeys, school_urn: str, trial: str | None = None,
                     round_name: str | None = None) -> tuple[str | None, str | None]:
    """What ``microtrials withdraw`` covers, as trial key parts: (intervention, round), None for every
    trial or every round (both None: the whole school)."""
    return (keys.key(trial, "", school_urn).intervention if trial else None,
            keys.key("", "", "", round_name).round if round_name else None)


def withdrawal(con: duckdb.DuckDBPyConnection, keys: TrialKeys, school_urn: str, trial: str | None = None,
               round_name: str | None = None) -> Plan:
    """What withdrawing a school does: its stored rows (of one trial, by name or alias, and/or one
    round, when given) as ``withdrawn`` change sets, and the combinations to delete (``replace``)."""
    keyed = _Keyed(keys)
    want_trial, want_round = withdrawal_scope(keys, school_urn, trial, round_name)
    before: dict[TrialKey, _Tally] = {}
    replace = set()
    for school, intervention, measure, round_sent, pupil, outcome, *_ in stored_rows(con, [school_urn]):
        key = keyed(school, intervention, measure, round_sent)
        if (want_trial is None or key.intervention == want_trial) and (want_round is None or key.round == want_round):
            before.setdefault(key, _Tally()).add(pupil, outcome)
            replace.add((school, intervention, measure, round_sent or ""))
    measures: dict[tuple, set[str]] = {}
    for key in before:
        measures.setdefault((key.intervention, key.round), set()).add(key.outcome_measure)
    out = []
    for key, old in sorted(before.items()):
        intervention, measure, round_label = keyed.names[school_urn, key]
        out.append(ChangeSet(
            school_urn=school_urn, key=key, intervention=intervention, outcome_measure=measure, round=round_label,
            pupils_before=old.rows, outcomes_before=old.scores, removed=len(old.pupils), state=WITHDRAWN,
            show_measure=len(measures[key.intervention, key.round]) > 1))
    return Plan(out, _table(replace, REPLACE_SCHEMA))


def stored_twice(con: duckdb.DuckDBPyConnection) -> str:
    """The run summary's notice when the warehouse may hold pupils twice, left by the old round bug
    (``sql/stored_twice.sql``: rows sent without a round before ``key_round`` was kept, and the same
    pupils of the same trial sent with a round); '' when none. Told, never repaired: whether the two
    rows are one round is for the officer to check (docs/loading.md says how to keep one)."""
    keys = from_warehouse(con)
    found: dict[str, int] = {}
    for school, *trial, pupils in con.execute(warehouse.sql("stored_twice")).fetchall():
        without, with_round = keys.key(trial[0], trial[1], school), keys.key(trial[2], trial[3], school, trial[4])
        if (without.intervention, without.outcome_measure) == (with_round.intervention, with_round.outcome_measure):
            label = f"{school} {keys.label(trial[2], school, trial[4])}"
            found[label] = found.get(label, 0) + pupils
    if not found:
        return ""
    listed = "; ".join(f"{label} ({_pupils(n)})" for label, n in sorted(found.items()))
    return (f"notice: the warehouse may hold pupils twice, sent without a round before rows kept their round and "
            f"again with one: {listed}; see 'Rows stored twice' in docs/loading.md")
