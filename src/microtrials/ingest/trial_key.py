"""The one trial key: the registered trial, outcome and round a delivered row belongs to."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, NamedTuple

from microtrials.ingest import warehouse
from microtrials.ingest.names import match_key


@dataclass(frozen=True, order=True)
class TrialKey:
    """What a delivery replaces, per school: matching keys (:func:`names.match_key`) of the
    intervention's registered name (of its own spelling when unregistered), of the outcome measure,
    and of the round (the registered round it resolves to, else the round sent, else '')."""

    intervention: str
    outcome_measure: str
    round: str = ""

    @property
    def text(self) -> str:
        """'reading / ngrt / 2026 autumn' (the round left out when there is none)."""
        return " / ".join(p for p in (self.intervention, self.outcome_measure, self.round) if p)


def plain_key(intervention: object, outcome_measure: object, round_name: object = None) -> TrialKey:
    """The key of names already resolved (e.g. a published row's intervention, outcome and round)."""
    return TrialKey(match_key(_text(intervention)), match_key(_text(outcome_measure)), match_key(_text(round_name)))


def _text(value: object) -> str:
    """A cell as text: None, NaN and pandas' missing values are ''."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    try:
        import pandas as pd

        if pd.isna(value):
            return ""
    except (TypeError, ValueError):
        pass
    return str(value).strip()


def name_index(rounds: Iterable[Any]) -> dict[str, tuple[str, str]]:
    """match_key of every registered name and alias -> (canonical name, 'name' or 'alias')."""
    rounds = list(rounds)
    index: dict[str, tuple[str, str]] = {}
    for r in rounds:
        index[match_key(r.intervention)] = (r.intervention, "name")
    for r in rounds:
        for alias in r.aliases:
            index.setdefault(match_key(alias), (r.intervention, "alias"))
    return index


def latest_started(rounds: Sequence[Any], today: date) -> Any:
    """The latest round with start_date <= today; the earliest round when none has started."""
    ordered = sorted(rounds, key=lambda r: (r.start_date, r.line))
    started = [r for r in ordered if r.start_date <= today]
    return started[-1] if started else ordered[0]


class Placement(NamedTuple):
    """Where the registry places a delivered (intervention, school, round sent)."""

    registered_intervention: str | None  # canonical name; None when not in the registry
    matched_by: str | None  # 'name' | 'alias'
    round: Any  # the registered round (registry.TrialRound), None when unresolved
    round_rule: str | None  # 'sent' | 'plan' | 'unplanned' | 'needs round'
    round_sent: str  # '' when none
    sent_unknown: bool  # a round was sent that names no registered round of the intervention


class RoundRow(NamedTuple):
    """The fields of a registered round that placing rows needs (as ``registry_rounds`` stores them)."""

    intervention: str
    round: str
    schools: frozenset[str]
    start_date: date
    line: int
    aliases: tuple[str, ...]


class TrialKeys:
    """Resolves delivered rows to their :class:`TrialKey` through one registry (or none).

    The rules (docs/registry.md, docs/loading.md): the intervention matches a registered name or
    alias by :func:`names.match_key`; a ``round`` sent that names a registered round of it wins;
    else a school planned in exactly one round belongs to it; a school planned in several rounds
    joins none until it sends ``round``; a school not in the plan joins the latest round started by
    ``today`` (else the earliest).
    """

    def __init__(self, rounds: Iterable[Any] = (), today: date | None = None) -> None:
        self.rounds = list(rounds)
        self.today = today or date.today()
        self.index = name_index(self.rounds)
        self._by_name: dict[str, list[Any]] = {}
        for r in sorted(self.rounds, key=lambda r: (r.start_date, r.line)):
            self._by_name.setdefault(match_key(r.intervention), []).append(r)

    def rounds_of(self, canonical: str) -> list[Any]:
        """The rounds of a registered name, by start date then file order."""
        return self._by_name.get(match_key(canonical), [])

    def place(self, intervention: object, school_urn: object, round_sent: object = None) -> Placement:
        """The registered name, round and rule for one delivered combination."""
        sent = " ".join(_text(round_sent).split())
        hit = self.index.get(match_key(_text(intervention)))
        if hit is None:
            return Placement(None, None, None, None, sent, False)
        canonical, how = hit
        rounds = self.rounds_of(canonical)
        urn = _text(school_urn)
        if sent:
            chosen = next((r for r in rounds if match_key(r.round) == match_key(sent)), None)
            if chosen is not None:
                return Placement(canonical, how, chosen, "sent", sent, False)
        planned = [r for r in rounds if urn in r.schools]
        if len(planned) == 1:
            chosen, rule = planned[0], "plan"
        elif planned:
            chosen, rule = None, "needs round"
        else:
            chosen, rule = latest_started(rounds, self.today), "unplanned"
        return Placement(canonical, how, chosen, rule, sent, bool(sent))

    def key(self, intervention: object, outcome_measure: object, school_urn: object, round_sent: object = None) -> TrialKey:
        """The trial key of a delivered row: see :class:`TrialKey`."""
        placed = self.place(intervention, school_urn, round_sent)
        name = placed.registered_intervention or _text(intervention)
        round_name = placed.round.round if placed.round is not None else placed.round_sent
        return TrialKey(match_key(name), match_key(_text(outcome_measure)), match_key(round_name))

    def label(self, intervention: object, school_urn: object, round_sent: object = None) -> str:
        """How the officer reads a trial and round: 'Café Readers 2026 Autumn' (registered names)."""
        placed = self.place(intervention, school_urn, round_sent)
        name = placed.registered_intervention or " ".join(_text(intervention).split())
        round_name = placed.round.round if placed.round is not None else placed.round_sent
        return f"{name} {round_name}".strip()


def rounds_from_rows(rows: Iterable[tuple]) -> list[RoundRow]:
    """:class:`RoundRow` objects from (intervention, round, schools, start_date, line, aliases)
    rows as ``sql/registry_keys.sql`` returns them (schools space-separated, aliases '|'-separated)."""
    out = []
    for intervention, round_name, schools, start_date, line, aliases in rows:
        out.append(RoundRow(
            intervention, round_name, frozenset((schools or "").split()), start_date, int(line),
            tuple(a for a in (aliases or "").split("|") if a.strip()),
        ))
    return out


def from_warehouse(con: Any, today: date | None = None) -> TrialKeys:
    """The trial keys of the registry the warehouse last stored (``registry_rounds``); without one,
    every intervention spelling is its own trial (by match key) and the round is the round sent."""
    if not warehouse.table_exists(con, "registry_rounds"):
        return TrialKeys((), today)
    return TrialKeys(rounds_from_rows(con.execute(warehouse.sql("registry_keys")).fetchall()), today)
