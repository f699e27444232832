"""Which delivered rows make which analysis: trials from the registry (rounds and the cumulative row) or, without one, from spellings.

A unit is one row of analysis: (intervention, outcome_measure, round) with the delivered
combinations (intervention and outcome spelling, school, round sent) whose pupils it analyses.
With a registry, :func:`microtrials.ingest.registry.match_deliveries` decides each combination's
registered round and outcome role; each round is a unit, and an outcome analysed in two or more
rounds with results also gets a cumulative unit (round ``all rounds``). Without a registry every
delivered (intervention, outcome_measure), spellings matched by :func:`names.match_key`, is one
unit, as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from microtrials.ingest import names
from microtrials.ingest.registry import (
    CUMULATIVE_ROUND,
    EXPLORATORY,
    PRIMARY,
    SECONDARY,
    Registry,
)

SEP = "\x1f"  # chr(31), as in sql/matched_cells.sql
UNREGISTERED = "unregistered"
#: Outcome roles published in the evidence table (None: no registry, every trial is published).
EVIDENCE_ROLES = (PRIMARY, SECONDARY, None)
#: Sort position of the cumulative row after every round.
CUMULATIVE_ORDER = 10_000


def combo_key(intervention: object, outcome_measure: object, school_urn: object, round_sent: object) -> str:
    """One delivered combination as sql/matched_cells.sql spells it (round blank when none sent)."""
    sent = "" if round_sent is None or (isinstance(round_sent, float) and round_sent != round_sent) else str(round_sent)
    return SEP.join([str(intervention), str(outcome_measure), str(school_urn), sent])


@dataclass(frozen=True)
class Unit:
    """One analysis: its published names, round and outcome role, and the pupils' combinations per round."""

    intervention: str
    outcome_measure: str
    round: str | None
    outcome_role: str | None
    parts: tuple[tuple[str, tuple[str, ...]], ...]  # (round name, combo keys), rounds oldest first
    spellings: tuple[tuple[str, str, int], ...]  # delivered (intervention, outcome_measure, rows)
    order: int = 0  # the round's position by start_date; CUMULATIVE_ORDER for "all rounds"

    @property
    def published(self) -> bool:
        """Evidence-table row: a registered primary or secondary outcome (or any trial without a registry)."""
        return self.outcome_role in EVIDENCE_ROLES

    @property
    def cumulative(self) -> bool:
        return self.round == CUMULATIVE_ROUND

    @property
    def label(self) -> str:
        base = f"{self.intervention} / {self.outcome_measure}"
        return f"{base} / {self.round}" if self.round else base

    @property
    def rounds(self) -> list[str]:
        return [name for name, _ in self.parts]


def _spellings(frame: pd.DataFrame) -> tuple[tuple[str, str, int], ...]:
    grouped = frame.groupby(["intervention", "outcome_measure"], sort=True)["rows"].sum()
    return tuple((str(i), str(o), int(n)) for (i, o), n in grouped.items())


def _sum_spellings(rows) -> tuple[tuple[str, str, int], ...]:
    totals: dict[tuple[str, str], int] = {}
    for i, o, n in rows:
        totals[(i, o)] = totals.get((i, o), 0) + n
    return tuple((i, o, n) for (i, o), n in sorted(totals.items()))


def _keys(frame: pd.DataFrame) -> tuple[str, ...]:
    return tuple(sorted(combo_key(i, o, s, r) for i, o, s, r in
                        zip(frame["intervention"], frame["outcome_measure"], frame["school_urn"], frame["round_sent"])))


def units_without_registry(combos: pd.DataFrame) -> list[Unit]:
    """Every delivered (intervention, outcome_measure), spellings grouped by names.match_key, as one unit."""
    frame = combos.assign(round_sent=combos["round"] if "round" in combos else None)
    groups = frame.groupby([frame["intervention"].map(names.match_key), frame["outcome_measure"].map(names.match_key)],
                           sort=False)
    units = []
    for _, group in groups:
        spellings = _spellings(group)
        units.append(Unit(
            intervention=names.display_name((i, n) for i, _, n in spellings),
            outcome_measure=names.display_name((o, n) for _, o, n in spellings),
            round=None, outcome_role=None, parts=(("", _keys(group)),), spellings=spellings))
    return sorted(units, key=lambda u: (u.intervention, u.outcome_measure))


def units_from_matching(registry: Registry, matched: pd.DataFrame) -> list[Unit]:
    """The units of matched combinations (:func:`registry.match_deliveries` output, with ``rows``
    and ``with_outcome`` columns): a unit per registered round and outcome (primary, secondary,
    exploratory), a unit per unregistered (intervention, outcome_measure), and a cumulative unit
    per outcome that two or more rounds analysed with results under the same role. Combinations
    whose round is unresolved (a school in several rounds that sent none) join no unit."""
    units: list[Unit] = []
    if matched.empty:
        return units
    frame = matched.copy()
    if "with_outcome" not in frame:
        frame["with_outcome"] = frame["rows"]
    frame["outcome_key"] = frame["outcome_measure"].map(names.match_key)

    unregistered = frame[~frame["registered"].astype(bool)]
    for _, group in unregistered.groupby([unregistered["intervention"].map(names.match_key), "outcome_key"], sort=False):
        spellings = _spellings(group)
        units.append(Unit(
            intervention=names.display_name((i, n) for i, _, n in spellings),
            outcome_measure=names.display_name((o, n) for _, o, n in spellings),
            round=None, outcome_role=UNREGISTERED, parts=(("", _keys(group)),), spellings=spellings))

    placed = frame[frame["registered"].astype(bool) & frame["round"].notna()]
    # Grouped once (linear in the registry's rounds): a 20,000-round registry filtered the
    # combinations once per intervention and round, 95 s for 4 schools.
    by_round = {key: group for key, group in placed.groupby(["registered_intervention", "round"], sort=False)}
    delivered = {name for name, _ in by_round}
    for canonical in (name for name in registry.interventions() if name in delivered):
        rounds = registry.rounds_of(canonical)
        by_outcome: dict[str, list[tuple[int, Unit, bool]]] = {}
        for position, trial_round in enumerate(rounds):
            in_round = by_round.get((canonical, trial_round.round))
            if in_round is None:
                continue
            for outcome_key, group in in_round.groupby("outcome_key", sort=True):
                role = str(group["outcome_role"].iloc[0])
                registered_names = {names.match_key(x): x for x in (trial_round.outcome_measure,
                                                                  *trial_round.secondary_outcomes)}
                spellings = _spellings(group)
                outcome = registered_names.get(outcome_key) or names.display_name((o, n) for _, o, n in spellings)
                unit = Unit(canonical, outcome, trial_round.round, role, ((trial_round.round, _keys(group)),),
                            spellings, order=position)
                units.append(unit)
                by_outcome.setdefault(outcome_key, []).append((position, unit, int(group["with_outcome"].sum()) > 0))
        for outcome_key, entries in by_outcome.items():
            with_results = [(p, u) for p, u, results in entries if results and u.outcome_role in (PRIMARY, SECONDARY)]
            roles = {u.outcome_role for _, u in with_results}
            if len(with_results) < 2 or len(roles) != 1:
                continue
            with_results.sort(key=lambda e: e[0])
            last = with_results[-1][1]
            units.append(Unit(
                canonical, last.outcome_measure, CUMULATIVE_ROUND, last.outcome_role,
                tuple(part for _, u in with_results for part in u.parts),
                _sum_spellings(s for _, u in with_results for s in u.spellings), order=CUMULATIVE_ORDER))
    return sorted(units, key=lambda u: (u.intervention, u.outcome_measure, u.order))


__all__ = ["CUMULATIVE_ROUND", "EXPLORATORY", "SECONDARY", "UNREGISTERED", "Unit", "combo_key",
           "units_from_matching", "units_without_registry"]
