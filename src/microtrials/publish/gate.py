"""The publication gate: one function decides, from a string's origin, whether it may reach the published folder.

Rule (docs/publishing.md, "The publication gate: which text is published"):

- **our own words** (``Origin.OURS``: labels, sentences microtrials writes) and the officer's
  registry text (``Origin.REGISTRY``: descriptions, strands) are shown;
- **file names** (``Origin.FILE_NAME``) are never shown, in any script: the school and "file N"
  stand in for them (:func:`file_label`);
- **dropped column headers** (``Origin.DROPPED_COLUMN``) are never shown: only their number and
  "a column that may hold personal data" (:func:`dropped_columns_text`);
- **any other cell of a school's file** (``Origin.CELL``) is never shown;
- **trial, outcome and round names** (``Origin.TRIAL``, ``OUTCOME``, ``ROUND``): with a registry of
  at least one trial in use, only when the registry declares them (a name, alias, outcome,
  secondary outcome or round): a name typed by schools, however many, could be a pupil's name in
  the wrong column, and the registry says which names are trials. With no registry (or one with no
  trial yet), when at least ``MIN_PUPILS`` pupils in at least ``MIN_SCHOOLS`` schools carry them
  (:meth:`Gate.name_allowed`);
- **a school URN** (``Origin.URN``) is shown when it is six digits, as a URN is.

Names are compared by :func:`microtrials.ingest.names.match_key` (capitals, spaces, accents), as every
other check compares them.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd

from microtrials.ingest.names import match_key, visible

MIN_PUPILS = 10
MIN_SCHOOLS = 2
_URN = re.compile(r"\d{6}")


class Origin(enum.Enum):
    """Where a string bound for the published folder came from."""

    OURS = "microtrials' own words"
    REGISTRY = "the officer's registry text"
    FILE_NAME = "a delivered file's name"
    DROPPED_COLUMN = "a dropped column's header"
    CELL = "a cell of a school's file"
    TRIAL = "an intervention name"
    OUTCOME = "an outcome name"
    ROUND = "a round name"
    URN = "a school URN"


NAMES = (Origin.TRIAL, Origin.OUTCOME, Origin.ROUND)


@dataclass(frozen=True)
class Gate:
    """Which trial, outcome and round names may be shown (match keys, per origin)."""

    registered: frozenset[tuple[Origin, str]] = field(default_factory=frozenset)
    carried: frozenset[tuple[Origin, str]] = field(default_factory=frozenset)
    #: a registry with at least one trial is in use: only its names are shown (else who carries them decides)
    has_registry: bool = False

    def name_allowed(self, key: tuple[Origin, str]) -> bool:
        """The one rule for a delivered name (origin, match key): registered, or, with no registry
        in use, carried by ``MIN_PUPILS`` pupils in each of ``MIN_SCHOOLS`` schools."""
        return key in self.registered or (not self.has_registry and key in self.carried)

    @property
    def withheld_reason(self) -> str:
        """Why a name this gate does not show is withheld, in words."""
        if self.has_registry:
            return "not in the registry"
        return (f"not registered, and not sent for {MIN_PUPILS} or more pupils by each of {MIN_SCHOOLS} or more "
                "schools")

    def show(self, text: object, origin: Origin) -> str | None:
        """The one decision: ``text`` when its origin allows it to be published, else None (a name
        without its invisible characters, which could hide text in it)."""
        if text is None or (not isinstance(text, str) and pd.isna(text)):
            return None
        text = str(text)
        if origin in (Origin.OURS, Origin.REGISTRY):
            return text
        if origin is Origin.URN:
            return text if _URN.fullmatch(text.strip()) else None
        if origin in NAMES:
            return visible(text) if self.name_allowed((origin, match_key(text))) else None
        return None  # FILE_NAME, DROPPED_COLUMN, CELL: never

    def allows(self, text: object, origin: Origin) -> bool:
        """Whether :meth:`show` publishes ``text``."""
        return self.show(text, origin) is not None


def registered_names(registry: object | None) -> frozenset[tuple[Origin, str]]:
    """Every name the registry declares: interventions and aliases, outcomes and secondary outcomes, rounds."""
    if registry is None:
        return frozenset()
    names: set[tuple[Origin, str]] = set()
    for trial in getattr(registry, "rounds", ()):
        names.update((Origin.TRIAL, match_key(n)) for n in (trial.intervention, *trial.aliases))
        names.update((Origin.OUTCOME, match_key(n)) for n in (trial.outcome_measure, *trial.secondary_outcomes))
        names.add((Origin.ROUND, match_key(trial.round)))
    names.add((Origin.ROUND, match_key("all rounds")))
    return frozenset(names)


def carried_names(carriers: pd.DataFrame | None) -> frozenset[tuple[Origin, str]]:
    """Names each of at least ``MIN_SCHOOLS`` schools sent for at least ``MIN_PUPILS`` pupils.

    ``carriers`` has columns origin ('trial' | 'outcome' | 'round'), name, school_urn, pupils
    (sql/name_carriers.sql); spellings with one match key count together.
    """
    if carriers is None or not len(carriers):
        return frozenset()
    origins = {"trial": Origin.TRIAL, "outcome": Origin.OUTCOME, "round": Origin.ROUND}
    frame = carriers.dropna(subset=["name"]).copy()
    frame["key"] = frame["name"].astype(str).map(match_key)
    per_school = frame.groupby(["origin", "key", "school_urn"])["pupils"].sum().reset_index()
    carrying = per_school[per_school["pupils"] >= MIN_PUPILS].groupby(["origin", "key"])["school_urn"].nunique()
    wide = carrying[carrying >= MIN_SCHOOLS]
    return frozenset((origins[o], k) for o, k in wide.index if o in origins and k)


def build(registry: object | None, carriers: pd.DataFrame | None) -> Gate:
    """The gate for one publication, from the registry in use and who carries each delivered name
    (a registry with no trial yet, e.g. a new workspace's header-only trials.csv, declares nothing)."""
    return Gate(registered_names(registry), carried_names(carriers), in_use(registry))


def in_use(registry: object | None) -> bool:
    """Whether a registry is in use: any trials.csv, a new workspace's header-only one too (its evidence
    table holds registered trials only, none yet; the names shown are the registered ones, none yet)."""
    return registry is not None


#: A gate that shows no delivered name at all (nothing is known to be safe).
CLOSED = Gate()


def file_label(urn: object, number: int) -> str:
    """What stands in for a delivered file's name: "file N from school <URN>" (the URN only when it is one)."""
    shown = CLOSED.show(urn, Origin.URN)
    return f"file {number} from school {shown}" if shown else f"file {number} with no school URN"


def dropped_columns_text(count: int) -> str:
    """What stands in for the headers of dropped columns: how many, never what they said."""
    if count <= 0:
        return ""
    if count == 1:
        return "1 column that may hold personal data (not loaded, not shown)"
    return f"{count} columns that may hold personal data (not loaded, not shown)"


def names_text(gate: Gate, trials: Iterable[tuple[str, str]]) -> str:
    """'intervention / outcome; ...' for the trials the gate shows, and how many it withheld
    ("an unregistered trial name (not shown)" with a registry in use)."""
    shown, withheld = [], 0
    for intervention, outcome in trials:
        i, o = gate.show(intervention, Origin.TRIAL), gate.show(outcome, Origin.OUTCOME)
        if i is None or o is None:
            withheld += 1
        else:
            shown.append(f"{i} / {o}")
    if withheld and gate.has_registry:
        shown.append(f"{'an' if withheld == 1 else withheld} unregistered trial name{'s' if withheld > 1 else ''} "
                     "(not shown)")
    elif withheld:
        shown.append(f"{withheld} trial name{'s' if withheld > 1 else ''} not shown ({gate.withheld_reason})")
    return "; ".join(shown)


def trusting(table: pd.DataFrame) -> Gate:
    """A gate that takes the names in ``table`` (intervention, outcome_measure, round) as declared:
    for a caller that hands over an evidence table it vouches for (the pipeline passes :func:`build`'s)."""
    names: set[tuple[Origin, str]] = set()
    for column, origin in (("intervention", Origin.TRIAL), ("outcome_measure", Origin.OUTCOME), ("round", Origin.ROUND)):
        if column in table.columns:
            names.update((origin, match_key(v)) for v in table[column].dropna().astype(str))
    return Gate(frozenset(names))


def row_shown(gate: Gate, row: dict | pd.Series) -> bool:
    """Whether an evidence row's names (intervention, outcome_measure and a round, if any) all pass the gate."""
    round_name = row.get("round")
    blank_round = round_name is None or (not isinstance(round_name, str) and pd.isna(round_name)) or round_name == ""
    return (gate.allows(row.get("intervention"), Origin.TRIAL) and gate.allows(row.get("outcome_measure"), Origin.OUTCOME)
            and (blank_round or gate.allows(round_name, Origin.ROUND)))


def withhold(table: pd.DataFrame, gate: Gate) -> tuple[pd.DataFrame, int]:
    """The evidence rows whose names the gate shows, and how many rows were withheld.

    Without a registry, a withheld row is a trial whose name is not carried widely: it is too small
    to estimate (fewer than ``MIN_PUPILS`` pupils or one school), so no figure is lost with it. With
    one, trial_results holds registered trials only (an unregistered intervention is never evidence).
    """
    if not len(table):
        return table, 0
    keep = table.apply(lambda row: row_shown(gate, row), axis=1).astype(bool)
    return table[keep].reset_index(drop=True), int((~keep).sum())


def from_warehouse(con, registry: object | None) -> Gate:
    """:func:`build` with the carriers read from the warehouse's `pupils` (sql/name_carriers.sql); with a
    registry in use only registered names are shown, so no carriers are read."""
    from microtrials.ingest import warehouse

    if in_use(registry) or not warehouse.table_exists(con, "pupils"):
        return build(registry, None)
    return build(registry, pupils_per_name(con.execute(warehouse.sql("name_carriers")).df()))


def pupils_per_name(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` (origin, name, school_urn, pupil_key: sql/name_carriers.sql) as carriers: the distinct
    pupils of each school per name, spellings with one match key together (ten spellings of a name
    typed for one pupil are one pupil)."""
    frame = rows.dropna(subset=["name"]).copy()
    frame["key"] = frame["name"].astype(str).map(match_key)
    out = frame.groupby(["origin", "key", "school_urn"], as_index=False).agg(
        name=("name", "first"), pupils=("pupil_key", "nunique"))
    return out[["origin", "name", "school_urn", "pupils"]]
