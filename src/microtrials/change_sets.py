"""Change sets: what a delivery does to each (school, trial, round) of the warehouse, held or applied, recorded."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import duckdb
import pandas as pd
import pyarrow as pa

from microtrials import warehouse
from microtrials.ingest.trial_key import TrialKey, TrialKeys

APPLIED, HELD, ACCEPTED, WITHDRAWN = "applied", "held", "accepted", "withdrawn"
KEY_COLUMNS = ["key_intervention", "key_outcome_measure", "key_round"]
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
    state: str = APPLIED
    reason: str = ""  # why it is held
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
            return (f"{self.label}{HELD_MARK}{self.reason}; the earlier {before} stay as they were (to apply it "
                    f"on purpose: microtrials accept {self.file_name})")
        if self.pupils_before == 0:
            text = f"{self.label}: {after} added"
        else:
            text = f"{self.label}: {before} replaced by {self.pupils_after} ({self.detail})"
        return text + ("; accepted by the officer" if self.state == ACCEPTED else "")

    @property
    def detail(self) -> str:
        """'1 added, 2 removed; outcome scores 58 -> 60' (scores told when they move otherwise than
        the pupils), or 'the same pupils'."""
        parts = [f"{n} {what}" for n, what in ((self.added, "added"), (self.removed, "removed")) if n]
        text = ", ".join(parts) or "the same pupils"
        scores = (self.outcomes_before, self.outcomes_after)
        if scores[0] != scores[1] and scores != (self.pupils_before, self.pupils_after):  # not just the pupils'
            text += f"; outcome scores {scores[0]} -> {scores[1]}"
        return text

    def school_text(self, rows_set_aside: bool) -> str:
        """Why the change was held and what to do, as the school's feedback file says it."""
        action = (HOLD_FIX_ROWS if rows_set_aside else HOLD_FIX_LEFT)
        return f"held, not applied: {self.reason}, so the earlier rows stay as they were; {action}"

    def row(self) -> dict:
        """The ``change_sets`` row (the time is the warehouse's)."""
        fields = asdict(self)
        key = fields.pop("key")
        fields.pop("show_measure")
        return fields | {"key_intervention": key["intervention"], "key_outcome_measure": key["outcome_measure"],
                         "key_round": key["round"], "message": self.message}


def _pupils(n: int) -> str:
    return f"{n} pupil{'' if n == 1 else 's'}"


def hold_reason(pupils_before: int, pupils_after: int, outcomes_before: int, outcomes_after: int) -> str:
    """Why a change would be held ('' when it may be applied): it would lose more than half of the
    school's pupils, or of its outcome scores, for that trial round (exactly half may go)."""
    if 2 * pupils_after < pupils_before:
        return f"it would replace {_pupils(pupils_before)} by {pupils_after}, more than half of them gone"
    if 2 * outcomes_after < outcomes_before:
        return (f"it would leave {outcomes_after} of the {outcomes_before} outcome scores, more than half "
                "of them gone")
    return ""


# How a held change reads (the marker finds the held lines of a stored report), and what the school can do.
HELD_MARK = ": held, not applied: "
HOLD_FIX_ROWS = "see the rows set aside and why, correct them and send the file again"
HOLD_FIX_LEFT = ("check the file holds every pupil randomised and every score, and send it again; if pupils "
                 "really left the trial, tell the data team, who can apply the file on purpose")


@dataclass
class Plan:
    """A group of deliveries' change sets and the rows they replace: stored combinations to delete
    (``replace``: school_urn, intervention, outcome_measure, round) and delivered combinations to
    insert (``insert``: file_name, intervention, outcome_measure, round)."""

    change_sets: list[ChangeSet] = field(default_factory=list)
    replace: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=COMBO))
    insert: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["file_name", *COMBO[1:]]))


def stored_rows(con: duckdb.DuckDBPyConnection, schools: list[str]) -> pd.DataFrame:
    """The warehouse's pupil rows of these schools: combination, pupil_key, and whether scored."""
    with_schools = pa.table({"school_urn": pa.array(sorted(set(schools)), pa.string())})
    con.register("batch_schools", with_schools)
    try:
        return con.execute(warehouse.sql("school_rows")).df()
    finally:
        con.unregister("batch_schools")


def _with_keys(frame: pd.DataFrame, keys: TrialKeys, names: dict) -> pd.DataFrame:
    """``frame`` with its trial key columns (and ``names``, filled in: combination -> display names)."""
    frame = frame.copy()
    frame["round"] = frame["round"].fillna("").astype(str)
    combos = frame[COMBO].drop_duplicates()
    found = []
    for school, intervention, measure, round_sent in combos.itertuples(index=False, name=None):
        key = keys.key(intervention, measure, school, round_sent)
        placed = keys.place(intervention, school, round_sent)
        round_name = placed.round.round if placed.round is not None else placed.round_sent
        names.setdefault((school, key), (placed.registered_intervention or " ".join(str(intervention).split()),
                                         " ".join(str(measure).split()), round_name))
        found.append((school, intervention, measure, round_sent, key.intervention, key.outcome_measure, key.round))
    return frame.merge(pd.DataFrame(found, columns=COMBO + KEY_COLUMNS), on=COMBO, how="left")


def plan_changes(stored: pd.DataFrame, incoming: pd.DataFrame, keys: TrialKeys, named: list[tuple] = (),
                 accept: bool = False) -> Plan:
    """What each delivery would do, per (school, trial key), and the rows to delete and insert.

    ``stored``: school_urn, intervention, outcome_measure, round, pupil_key, scored (the warehouse's
    rows of the deliveries' schools); ``incoming``: file_name, delivery_id, school_urn, intervention,
    outcome_measure, round, pupil_key, outcome (the staged rows; at most one file per school).
    ``named``: (file_name, delivery_id, school_urn, intervention, outcome_measure) of trials a file
    names with no loadable row: it would remove the rows of the round the registry places the school in.

    A change set that would lose more than half of the school's pupils or outcome scores for its
    trial round is ``held`` (nothing of it applied), unless ``accept``: then the held ones are
    ``accepted`` and applied, and the others are left out (an accept applies what was held only).
    """
    names: dict = {}
    incoming = _with_keys(incoming, keys, names)
    stored = _with_keys(stored, keys, names)
    group = ["file_name", "delivery_id", "school_urn", *KEY_COLUMNS]
    after = incoming.groupby(group, sort=True).agg(pupils_after=("pupil_key", "size"),
                                                   outcomes_after=("outcome", "count")).reset_index()
    after = pd.concat([after, _named_without_rows(named, incoming, keys, names)], ignore_index=True)
    before = stored.groupby(["school_urn", *KEY_COLUMNS]).agg(
        pupils_before=("pupil_key", "size"), outcomes_before=("scored", "sum")).reset_index()
    sets = after.merge(before, on=["school_urn", *KEY_COLUMNS], how="left").fillna(
        {"pupils_before": 0, "outcomes_before": 0})
    sets = sets[(sets["pupils_after"] > 0) | (sets["pupils_before"] > 0)]
    sets = sets.merge(_pupil_changes(incoming, stored, sets), on=["school_urn", *KEY_COLUMNS], how="left").fillna(
        {"added": 0, "removed": 0})
    several = sets.groupby(["file_name", "key_intervention", "key_round"])["key_outcome_measure"].transform("nunique") > 1
    change_sets = [_change_set(row, names, show, accept) for row, show in zip(sets.itertuples(index=False), several)]
    if accept:
        change_sets = [c for c in change_sets if c.state == ACCEPTED]
    applied = {(c.file_name, c.school_urn, c.key) for c in change_sets if c.state in (APPLIED, ACCEPTED)}
    return Plan(change_sets, _replaced(stored, applied), _inserted(incoming, applied))


def _named_without_rows(named, incoming: pd.DataFrame, keys: TrialKeys, names: dict) -> pd.DataFrame:
    """Change-set stubs (no pupils after) for trials a file names without a loadable row."""
    carried = set(zip(incoming["file_name"], incoming["intervention"], incoming["outcome_measure"]))
    rows = []
    for file_name, delivery_id, school, intervention, measure in named:
        if (file_name, intervention, measure) in carried:
            continue
        key = keys.key(intervention, measure, school, None)
        placed = keys.place(intervention, school, None)
        round_name = placed.round.round if placed.round is not None else ""
        names.setdefault((school, key), (placed.registered_intervention or intervention, measure, round_name))
        rows.append((file_name, delivery_id, school, key.intervention, key.outcome_measure, key.round, 0, 0))
    columns = ["file_name", "delivery_id", "school_urn", *KEY_COLUMNS, "pupils_after", "outcomes_after"]
    return pd.DataFrame(rows, columns=columns).drop_duplicates()


def _pupil_changes(incoming: pd.DataFrame, stored: pd.DataFrame, sets: pd.DataFrame) -> pd.DataFrame:
    """Pupils added (delivered, not held before) and removed (held before, not delivered) per
    (school, trial key) of ``sets``."""
    on = ["school_urn", *KEY_COLUMNS]
    pupils_in = incoming[on + ["pupil_key"]].drop_duplicates()
    pupils_before = stored[on + ["pupil_key"]].drop_duplicates().merge(sets[on].drop_duplicates(), on=on)
    both = pupils_in.merge(pupils_before, on=on + ["pupil_key"], how="outer", indicator=True)
    added = both[both["_merge"] == "left_only"].groupby(on).size().rename("added")
    removed = both[both["_merge"] == "right_only"].groupby(on).size().rename("removed")
    return pd.concat([added, removed], axis=1).reset_index()


def _change_set(row, names: dict, show_measure: bool, accept: bool) -> ChangeSet:
    """One planned change set from a row of the plan's frame, held or not."""
    key = TrialKey(row.key_intervention, row.key_outcome_measure, row.key_round)
    intervention, measure, round_name = names[row.school_urn, key]
    counts = [int(x) for x in (row.pupils_before, row.pupils_after, row.outcomes_before, row.outcomes_after)]
    reason = hold_reason(*counts)
    state = (ACCEPTED if accept else HELD) if reason else APPLIED
    return ChangeSet(
        school_urn=row.school_urn, key=key, intervention=intervention, outcome_measure=measure, round=round_name,
        delivery_id=row.delivery_id, file_name=row.file_name, pupils_before=counts[0], pupils_after=counts[1],
        outcomes_before=counts[2], outcomes_after=counts[3], added=int(row.added), removed=int(row.removed),
        state=state, reason=reason, show_measure=bool(show_measure),
    )


def _replaced(stored: pd.DataFrame, applied: set) -> pd.DataFrame:
    """The stored combinations the applied change sets replace."""
    schools = {(school, key) for _file, school, key in applied}
    mask = [(s, TrialKey(i, o, r)) in schools for s, i, o, r in
            zip(stored["school_urn"], *(stored[c] for c in KEY_COLUMNS))]
    return stored.loc[mask, COMBO].drop_duplicates().reset_index(drop=True)


def _inserted(incoming: pd.DataFrame, applied: set) -> pd.DataFrame:
    """The delivered combinations the applied change sets insert."""
    mask = [(f, s, TrialKey(i, o, r)) in applied for f, s, i, o, r in
            zip(incoming["file_name"], incoming["school_urn"], *(incoming[c] for c in KEY_COLUMNS))]
    return incoming.loc[mask, ["file_name", *COMBO[1:]]].drop_duplicates().reset_index(drop=True)


CHANGE_SET_COLUMNS = [
    "delivery_id", "file_name", "school_urn", "intervention", "outcome_measure", "round", "key_intervention",
    "key_outcome_measure", "key_round", "pupils_before", "pupils_after", "outcomes_before", "outcomes_after",
    "added", "removed", "state", "reason", "message",
]


def change_sets_table(change_sets: list[ChangeSet]) -> pa.Table:
    """The ``change_sets`` rows of these change sets, as the Arrow table ``sql/insert_change_sets.sql`` reads."""
    frame = pd.DataFrame([c.row() for c in change_sets], columns=CHANGE_SET_COLUMNS)
    schema = pa.schema([(c, pa.int64() if c.startswith(("pupils_", "outcomes_")) or c in ("added", "removed")
                         else pa.string()) for c in CHANGE_SET_COLUMNS])
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
