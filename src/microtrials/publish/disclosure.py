"""Disclosure control for published pupil counts: small cells blanked so that no sum gives them back.

The rule (docs/methods.md, "Disclosure control"), after the ONS/GSS guidance on protecting
tables (secondary suppression: a blanked cell must not be recoverable from published totals):

1. **Primary.** A school whose analysed pupils in either group number 1 to ``threshold - 1``
   has its counts and figures blanked. (A 0 is a structural zero, "no pupils in that group",
   and is published.)
2. **Secondary.** The trial's total ``pupils_analysed`` equals the sum of the schools' two
   counts, so one blanked school could be recovered by subtraction. When exactly one school is
   blanked, the next smallest school (by pupils, then URN) is blanked too; and schools keep being
   added, smallest first, until the blanked schools together hold at least ``threshold`` pupils,
   so the difference itself is never a small number.
3. **Totals.** When even all schools together stay below ``threshold`` (and whenever a total
   count is 1 to ``threshold - 1``), the trial's counts are blanked (``pupils_randomised``,
   ``pupils_analysed`` and ``attrition_pct``, which would give the analysed count back).
4. **One school.** A trial with a single school publishes no per-school rows at all: that
   school's figures would be the trial's, with its URN beside them.

``protect_schools`` applies 1, 2 and 4 to one trial's per-school table; ``protect_totals``
applies 3 to the trial's evidence row.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import pandas as pd

from microtrials.guidance import SUPPRESSION_THRESHOLD

COUNT_COLUMNS = ("n_intervention", "n_control")
#: The evidence-table counts that protect_totals may blank.
TOTAL_COUNTS = ("pupils_randomised", "pupils_analysed")

#: The one reason published for any blanked count, primary or secondary (GSS: one symbol for both,
#: so which blank is the small group cannot be told).
BLANKED = f"a group under {SUPPRESSION_THRESHOLD} pupils, or blanked to protect one"
PRIMARY = f"fewer than {SUPPRESSION_THRESHOLD} pupils in a group"
SECONDARY = "not published so that another school's blanked figures cannot be worked out by subtraction"


def _count(value: object) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number


def is_small(value: object, threshold: int = SUPPRESSION_THRESHOLD) -> bool:
    """True for a count from 1 to ``threshold - 1``; a blank count is treated as small (unknown)."""
    number = _count(value)
    return math.isnan(number) or 0 < number < threshold


def protect_schools(schools: pd.DataFrame, threshold: int = SUPPRESSION_THRESHOLD) -> tuple[pd.DataFrame, list[str]]:
    """One trial's per-school rows after disclosure control, and which URNs were blanked.

    Blanked rows keep their URN and round; every other column except ``note``, ``school_urn`` and ``school_round`` becomes
    blank, ``suppressed`` gives the reason without the count, and ``note`` is replaced by one that
    quotes no count. A single-school trial returns no rows.
    """
    out = schools.copy().reset_index(drop=True)
    if "suppressed" not in out.columns:
        out["suppressed"] = ""
    out["suppressed"] = out["suppressed"].fillna("").astype(object)
    if len(out) <= 1:
        return out.iloc[0:0].copy(), list(out["school_urn"].astype(str))
    counts = out[list(COUNT_COLUMNS)].apply(pd.to_numeric, errors="coerce")
    primary = counts.apply(lambda row: any(is_small(v, threshold) for v in row), axis=1)
    blanked = set(out.index[primary])
    reasons = {i: PRIMARY for i in blanked}
    if blanked:
        size = counts.sum(axis=1, min_count=1).fillna(0)
        order = sorted((i for i in out.index if i not in blanked),
                       key=lambda i: (size[i], str(out.loc[i, "school_urn"])))
        while order and (len(blanked) < 2 or size[list(blanked)].sum() < threshold):
            nxt = order.pop(0)
            blanked.add(nxt)
            reasons[nxt] = SECONDARY
    figure_columns = [c for c in out.columns if c not in ("school_urn", "school_round", "suppressed", "note")]
    for column in figure_columns:
        values = out[column]
        if pd.api.types.is_integer_dtype(values):
            out[column] = values.astype("Int64")
        elif pd.api.types.is_bool_dtype(values) or values.dtype == object:
            out[column] = values.astype(object)
    for i in sorted(blanked):
        out.iloc[i] = blank_row(out.iloc[i], figure_columns)
    return out, sorted(str(out.loc[i, "school_urn"]) for i in blanked)


def blank_row(row: pd.Series, figure_columns: list[str] | None = None) -> pd.Series:
    """A per-school row with its counts and figures blanked, ``suppressed`` and ``note`` saying so
    in the same words whatever the reason (GSS: one symbol for primary and secondary suppression,
    so the small group cannot be told from the school blanked to protect it)."""
    out = row.copy().astype(object)
    columns = figure_columns or [c for c in out.index if c not in ("school_urn", "school_round", "suppressed", "note")]
    for column in columns:
        out[column] = None
    out["suppressed"] = BLANKED
    if "note" in out.index:
        out["note"] = "figures not published: " + BLANKED
    return out


def protect_totals(row: dict, threshold: int = SUPPRESSION_THRESHOLD) -> dict:
    """The evidence row with small total counts (1 to ``threshold - 1``) blanked (rule 3).

    ``attrition_pct`` is blanked with either count, since with the other it gives the count back.
    """
    out = dict(row)
    blanked = [c for c in TOTAL_COUNTS if c in out and not _blank(out[c]) and is_small(out[c], threshold)]
    for column in blanked:
        out[column] = None
    if blanked and "attrition_pct" in out:
        out["attrition_pct"] = None
    return out


def _blank(value: object) -> bool:
    try:
        return value is None or bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


# --- across every table of a publication, and against the previous publication -----------------

CHANGED = "changed by fewer than 10 pupils since the last publication"

Key = tuple


@dataclass
class Relation:
    """``total = sum(parts)`` (+ a hidden remainder when the published parts do not add up to it)."""

    total: Key
    parts: list[Key]
    #: blank the total rather than a part when one more cell must go (e.g. pupils randomised, not analysed)
    prefer_total: bool = False


@dataclass
class Linked:
    """Every published pupil count of one publication: its true value, the row it is blanked with,
    and the sums an attacker knows hold between them."""

    values: dict[Key, float] = field(default_factory=dict)
    row_of: dict[Key, Key] = field(default_factory=dict)
    relations: list[Relation] = field(default_factory=list)
    #: cells blanked already (by the per-table rules), with the reason
    blanked: dict[Key, str] = field(default_factory=dict)

    def add(self, key: Key, value: object, row: Key, blank: bool) -> None:
        self.values[key] = _count(value)
        self.row_of[key] = row
        if blank:
            self.blanked[key] = PRIMARY


def _finite(x: float) -> bool:
    return not math.isnan(x)


def link(linked: Linked, previous: dict[Key, float] | None = None,
         threshold: int = SUPPRESSION_THRESHOLD) -> tuple[dict[Key, str], list[Relation]]:
    """Which cells to blank so that no sum or difference of published counts, in this publication
    or between it and ``previous`` (cell -> value as last published), gives back a group of 1 to
    ``threshold - 1`` pupils; and the relations that could not be protected (should be none).

    1. **Primary**: a count of 1 to ``threshold - 1``.
    2. **Change**: a count that moved by 1 to ``threshold - 1`` since ``previous`` (the difference
       is a group of pupils who joined or left).
    3. **Secondary**, until nothing changes: in every relation ``total = parts``, a cell the
       attacker does not know (blank now, and not published unchanged before) must not be the only
       one; and when the total is known, the unknown cells together must not hold 1 to
       ``threshold - 1`` pupils. Otherwise the smallest other part (then the total) still
       published is blanked too. A cell published before with the same value is known, so it never
       counts as protection.
    Blanking a cell blanks its row (both arms of a school; both counts of an evidence row).
    """
    previous = previous or {}
    blanked = dict(linked.blanked)
    rows: dict[Key, list[Key]] = {}
    for key, row in linked.row_of.items():
        rows.setdefault(row, []).append(key)

    def blank(key: Key, reason: str) -> None:
        for sibling in rows.get(linked.row_of.get(key, key), [key]):
            blanked.setdefault(sibling, reason)

    for key, value in linked.values.items():
        if _finite(value) and 0 < value < threshold:
            blank(key, PRIMARY)
        before = previous.get(key)
        if before is not None and _finite(value) and _finite(before) and 0 < abs(value - before) < threshold:
            blank(key, CHANGED)

    def known(key: Key) -> bool:
        if key not in blanked:
            return True
        before = previous.get(key)
        return before is not None and before == linked.values.get(key)

    unprotected: list[Relation] = []
    for _ in range(10 * len(linked.values) + 10):
        changed = False
        for relation in linked.relations:
            need = _needs_more(relation, linked.values, known, threshold)
            if need:
                pick = _complement(relation, linked.values, blanked, previous)
                if pick is None:
                    unprotected.append(relation)
                    continue
                blank(pick, SECONDARY)
                changed = True
        if not changed:
            break
        unprotected = []
    return blanked, unprotected


def _needs_more(relation: Relation, values: dict[Key, float], known, threshold: int) -> bool:
    """Whether ``relation`` gives back a blanked cell exactly, or a group of 1 to ``threshold - 1``."""
    members = [relation.total, *relation.parts]
    if any(m not in values or not _finite(values[m]) for m in members):
        return False
    # pupils in no published part (e.g. a round's pupils who joined no school row): never published
    remainder = values[relation.total] - sum(values[p] for p in relation.parts)
    hidden = [m for m in members if not known(m)]
    if not known(relation.total):
        # total = known parts + hidden parts + remainder: with the total hidden, the hidden parts
        # and the remainder can only be had together with it; alone, the total is given back
        return hidden == [relation.total] and not remainder and values[relation.total] != 0
    recovered = sum(values[m] for m in hidden) + remainder  # what subtraction gives back
    if len(hidden) == 1 and not remainder:
        return values[hidden[0]] != 0  # a blanked cell given back exactly
    return 0 < abs(recovered) < threshold


def _complement(relation: Relation, values: dict[Key, float], blanked: dict[Key, str],
                previous: dict[Key, float]) -> Key | None:
    """The cell to blank next in ``relation``: the smallest part still published (and not published
    unchanged before), then the total."""
    def hideable(key: Key) -> bool:
        return key not in blanked and previous.get(key) != values.get(key) and _finite(values.get(key, math.nan))
    if relation.prefer_total and hideable(relation.total):
        return relation.total
    parts = sorted((p for p in relation.parts if hideable(p) and values[p] > 0), key=lambda p: (values[p], str(p)))
    if parts:
        return parts[0]
    return relation.total if hideable(relation.total) else None


# Sentences of the models' notes that quote a count of pupils, said without it: a count in a note is
# a published count like any other (an FSM count beside pupils_analysed gives the non-FSM group).
_PUPIL_COUNTS = [
    (re.compile(r"only \d+ pupils analysed for (\d+) fixed effects"), r"too few pupils analysed for \1 fixed effects"),
    (re.compile(r"\d+ FSM pupils analysed in \d+ schools? with both arms"), "too few FSM pupils or schools with both arms"),
    (re.compile(r"(?<!at least )\b\d+ (FSM |analysed )?pupils?\b"), r"some \1pupils"),
]


def without_pupil_counts(text: object) -> object:
    """A note with every count of pupils taken out (the needs "at least 30 pupils" stay)."""
    if not isinstance(text, str):
        return text
    for pattern, replacement in _PUPIL_COUNTS:
        text = pattern.sub(replacement, text)
    return text
