"""Disclosure control for published pupil counts: small groups blanked, and an exact audit that no combination gives one back."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from microtrials.guidance import ATTRITION_RATINGS, SUPPRESSION_THRESHOLD

COUNT_COLUMNS = ("n_intervention", "n_control")
#: The evidence-table counts that protect_totals may blank.
TOTAL_COUNTS = ("pupils_randomised", "pupils_analysed")

#: The one reason published for any blanked count, primary or secondary (GSS: one symbol for both,
#: so which blank is the small group cannot be told).
BLANKED = f"a group under {SUPPRESSION_THRESHOLD} pupils, or blanked to protect one"
PRIMARY = f"fewer than {SUPPRESSION_THRESHOLD} pupils in a group"
SECONDARY = "not published so that another school's blanked figures cannot be worked out by subtraction"


def as_count(value: object) -> float:
    """``value`` as a number of pupils, NaN when it is not one (blank, text)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number


def is_small(value: object, threshold: int = SUPPRESSION_THRESHOLD) -> bool:
    """True for a count from 1 to ``threshold - 1``; a blank count is treated as small (unknown)."""
    number = as_count(value)
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
    out = blank_rows(out, sorted(blanked), figure_columns)
    return out, sorted(str(out.loc[i, "school_urn"]) for i in blanked)


def blank_rows(frame: pd.DataFrame, positions: list[int], figure_columns: list[str] | None = None) -> pd.DataFrame:
    """``frame`` with the rows at ``positions`` blanked: counts and figures blank, ``suppressed`` and
    ``note`` saying so in the same words whatever the reason (GSS: one symbol for primary and
    secondary suppression, so the small group cannot be told from the school blanked to protect it)."""
    if not positions:
        return frame
    out = frame.copy()
    columns = figure_columns or [c for c in out.columns if c not in ("school_urn", "school_round", "suppressed", "note")]
    rows = out.index[positions]
    for column in columns:
        if pd.api.types.is_bool_dtype(out[column]) or pd.api.types.is_integer_dtype(out[column]) and \
                not isinstance(out[column].dtype, pd.Int64Dtype):
            out[column] = out[column].astype(object)
        out.loc[rows, column] = None
    out["suppressed"] = out["suppressed"].astype(object) if "suppressed" in out else ""
    out.loc[rows, "suppressed"] = BLANKED
    if "note" in out.columns:
        out["note"] = out["note"].astype(object)
        out.loc[rows, "note"] = "figures not published: " + BLANKED
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
    """``total = sum(parts)`` (+ an unpublished remainder when the parts do not add up to it)."""

    total: Key
    parts: list[Key]
    #: blank the total rather than a part when one more cell must go (e.g. pupils randomised, not analysed)
    prefer_total: bool = False


@dataclass
class Linked:
    """Every true pupil count behind one publication, published or not: its value, the rows it is
    published in (none: never published, so always unknown) and how publications key it; and the
    sums that hold between them."""

    values: dict[Key, float] = field(default_factory=dict)
    #: variable -> the published rows holding it (a school's cells are one variable in every table)
    rows: dict[Key, list[Key]] = field(default_factory=dict)
    #: published row -> the variables it holds (blanked together)
    members: dict[Key, list[Key]] = field(default_factory=dict)
    #: variable -> the keys publications give it (``previous`` is keyed so)
    keys: dict[Key, list[Key]] = field(default_factory=dict)
    relations: list[Relation] = field(default_factory=list)
    #: cells blanked already (by the per-table rules), with the reason
    blanked: dict[Key, str] = field(default_factory=dict)
    #: counts whose sum is a group of pupils no table shows (a school's arms: its pupils analysed)
    groups: dict[tuple[Key, ...], None] = field(default_factory=dict)

    def add(self, var: Key, value: object, row: Key | None = None, blank: bool = False,
            key: Key | None = None) -> None:
        """Count ``var`` (true ``value``), published in ``row`` (blank there when ``blank``) or,
        with ``row`` None, not published; ``key`` is how publications key it (default ``var``)."""
        self.values.setdefault(var, as_count(value))
        key = var if key is None else key
        if key not in self.keys.setdefault(var, []):
            self.keys[var].append(key)
        if row is not None:
            if row not in self.rows.setdefault(var, []):
                self.rows[var].append(row)
            if var not in self.members.setdefault(row, []):
                self.members[row].append(var)
            if blank:
                self.blanked.setdefault(var, PRIMARY)


def _finite(x: float) -> bool:
    return not math.isnan(x)


def _small(value: float, threshold: int) -> bool:
    return 0 < abs(round(value)) < threshold


@dataclass
class _Block:
    """Variables joined by relations (one trial's cells): protected together, audited apart."""

    variables: list[Key]
    relations: list[int]


@dataclass(frozen=True)
class Violation:
    """What an attacker gets back: a ``cell`` exactly (``kind`` "group": a count of 1 to 9;
    "changed": 1 to 9 away from its last published value, or from the last published value of a
    count inside or around it, or from its value in an earlier publication, ``others``), ("inside")
    a known ``cell`` 1 to 9 less than a known count it is inside (``others``), ("pupils") a group of
    1 to 9 pupils the sum of ``cell`` and ``others`` gives back (a school's pupils, or their change
    since an earlier publication), or ("sum") the unknown cells of ``relation`` together hold 1 to 9."""

    kind: str
    cell: Key | None = None
    relation: int | None = None
    #: the other counts the violation is made of (see above)
    others: tuple = ()


class _Audit:
    """The exact audit of one publication (docs/methods.md, "Disclosure control"): the relations as
    linear equations over every count, the known counts substituted, and a count is given back
    exactly when its unit vector lies in the row space of the equations restricted to the unknowns."""

    def __init__(self, linked: Linked, previous: dict[Key, float], threshold: int,
                 earlier: list[dict] | None = None) -> None:
        self.linked, self.previous, self.threshold = linked, previous, threshold
        self.values = dict(linked.values)
        self.blanked = dict(linked.blanked)
        self.terms: list[dict[Key, int]] = []
        self.prefer: list[bool] = []
        self.of: dict[Key, list[int]] = {}
        self.children: dict[Key, list[Key]] = {}
        self.parents: dict[Key, list[Key]] = {}
        self._before: dict[tuple[Key, bool], list[float]] = {}
        self._inside: dict[Key, list[Key]] = {}
        #: bumped whenever the blanked counts change: the connected sets of unknowns are kept until then
        self._version, self._space_version = 0, 0
        self._spaces: dict[Key, tuple[dict[Key, int], np.ndarray]] = {}
        self._differenced: dict[Key, bool] = {}
        #: an earlier publication's counts that are not this one's (other value, or not counted now):
        #: shown there (known) or not; never published now, so never blanked now
        self.fixed: dict[Key, bool] = {}
        #: (count now, the same count in an earlier publication with another value): their difference is pupils
        self.pairs: list[tuple[Key, Key]] = []
        #: sums of counts that are a group of pupils (count -> coefficient, its true size)
        self.combos: list[tuple[dict[Key, int], float]] = [
            ({m: 1 for m in g}, sum(self.values[m] for m in g)) for g in linked.groups
            if all(_finite(self.values.get(m, math.nan)) for m in g)]
        for relation in linked.relations:
            self._equation(relation)
        for state in earlier or []:
            self._earlier(state)

    def _earlier(self, state: dict) -> None:
        """Join an earlier publication's counts and sums (:func:`state`) to this one's: a count with the
        same key and value is the same count (known if shown in any publication, else unknown); any
        other is a count of its own (one per earlier value), tied to this publication's by the sums
        that held then; a count's change since then (now less then) is a group of pupils."""
        ids: dict[Key, Key] = {}
        for var, value, shown in state["cells"]:
            var, value = tuple(var), as_count(value)
            now = self.values.get(var, math.nan)
            same = _finite(value) and _finite(now) and round(now) == round(value)
            ids[var] = var if same else ("earlier", value, *var)
            if not same and ids[var] not in self.values:
                self.values[ids[var]] = value
                self.fixed.setdefault(ids[var], False)
                if _finite(value) and _finite(now):
                    self.pairs.append((var, ids[var]))
            if shown:
                self.fixed[ids[var]] = True
        for total, parts, prefer in state["relations"]:
            if tuple(total) in ids and all(tuple(p) in ids for p in parts):
                self._equation(Relation(ids[tuple(total)], [ids[tuple(p)] for p in parts], prefer))
        for group in state.get("groups", []):  # a school's pupils then, and their change since
            group = [tuple(m) for m in group]
            if not all(m in ids for m in group) or all(ids[m] == m for m in group):
                continue  # unchanged: the same group as now
            then = {ids[m]: 1 for m in group}
            self.combos.append((then, sum(self.values[v] for v in then)))
            if tuple(group) in self.linked.groups:
                change = {m: 1 for m in group} | {ids[m]: -1 for m in group if ids[m] != m}
                self.combos.append((change, sum(self.values[v] * c for v, c in change.items())))

    def _equation(self, relation: Relation) -> None:
        members = [relation.total, *relation.parts]
        if any(m not in self.values or not _finite(self.values[m]) for m in members):
            return
        terms: dict[Key, int] = {relation.total: 1}
        for part in relation.parts:
            terms[part] = terms.get(part, 0) - 1
        remainder = self.values[relation.total] - sum(self.values[p] for p in relation.parts)
        if round(remainder):  # pupils in no part (e.g. randomised but not analysed): never published
            slack = ("unpublished remainder", len(self.terms))
            self.values[slack] = remainder
            terms[slack] = -1
        terms = {k: c for k, c in terms.items() if c}
        if not terms:
            return
        index = len(self.terms)
        self.terms.append(terms)
        self.prefer.append(relation.prefer_total)
        for member in terms:
            self.of.setdefault(member, []).append(index)
        if relation.total in terms:
            for part in terms:
                if part != relation.total:
                    self.children.setdefault(relation.total, []).append(part)
                    self.parents.setdefault(part, []).append(relation.total)

    def total(self, index: int) -> Key:
        return next(iter(self.terms[index]))

    def published(self, var: Key) -> bool:
        return bool(self.linked.rows.get(var))

    def known_before(self, var: Key) -> bool:
        return any(self.previous.get(k) == self.values[var] for k in self.linked.keys.get(var, []))

    def known(self, var: Key) -> bool:
        """Published now, published before with the same value, or 0 (taken as known: an unknown 0
        can be pinned by the counts being non-negative, which the linear audit does not see)."""
        if not _finite(self.values[var]) or round(self.values[var]) == 0:
            return True
        if self.published(var) and var not in self.blanked:
            return True
        return self.fixed.get(var, False) or self.known_before(var)

    def hideable(self, var: Key) -> bool:
        value = self.values.get(var, math.nan)
        return (self.published(var) and var not in self.blanked and _finite(value) and value > 0
                and not self.known_before(var) and not self.fixed.get(var, False))

    def changed(self, var: Key) -> bool:
        value = self.values[var]
        return any(_small(value - self.previous[k], self.threshold)
                   for k in self.linked.keys.get(var, []) if k in self.previous and _finite(self.previous[k]))

    def before(self, var: Key, down: bool) -> list[float]:
        """The values last published for the counts inside ``var`` (its parts, their parts, ...; with
        ``down`` False, the counts it is inside): a count less one inside it is a group of pupils."""
        if (var, down) not in self._before:
            links = self.children if down else self.parents
            seen, stack, out = {var}, [var], []
            while stack:
                for other in links.get(stack.pop(), []):
                    if other not in seen:
                        seen.add(other)
                        stack.append(other)
                        out += [self.previous[k] for k in self.linked.keys.get(other, [])
                                if k in self.previous and _finite(self.previous[k])]
            self._before[(var, down)] = out
        return self._before[(var, down)]

    def inside(self, var: Key) -> list[Key]:
        """The counts inside ``var`` (its parts, their parts, ...): ``var`` less any of them is a group
        of pupils (all rounds' pupils randomised less one round's pupils analysed: that round's pupils
        lost and the other rounds' pupils)."""
        if var not in self._inside:
            seen, stack, out = {var}, [var], []
            while stack:
                for other in self.children.get(stack.pop(), []):
                    if other not in seen:
                        seen.add(other)
                        stack.append(other)
                        out.append(other)
            self._inside[var] = out
        return self._inside[var]

    def differenced(self, var: Key) -> bool:
        """Whether ``var`` less a count inside it as last published, or a count it is inside as last
        published less ``var``, is 1 to ``threshold - 1``."""
        if var not in self._differenced:
            value = self.values[var]
            self._differenced[var] = (any(0 < round(value - p) < self.threshold for p in self.before(var, True))
                                      or any(0 < round(p - value) < self.threshold for p in self.before(var, False)))
        return self._differenced[var]

    def blank(self, var: Key, reason: str) -> list[Key]:
        """Blank ``var`` in every row it is published in, with the rest of each row; the cells newly blanked."""
        added = []
        for row in self.linked.rows.get(var, [var]):
            for sibling in self.linked.members.get(row, [var]):
                if sibling not in self.blanked:
                    self.blanked[sibling] = reason
                    added.append(sibling)
        self._version += 1
        return added

    def blocks(self) -> list[_Block]:
        """The variables joined by relations, each with its relations."""
        parent: dict[Key, Key] = {v: v for v in self.values}

        def find(v: Key) -> Key:
            while parent[v] != v:
                parent[v] = parent[parent[v]]
                v = parent[v]
            return v
        for terms in self.terms:
            first, *rest = terms
            for other in rest:
                parent[find(other)] = find(first)
        groups: dict[Key, _Block] = {}
        for v in self.values:
            groups.setdefault(find(v), _Block([], [])).variables.append(v)
        for index, terms in enumerate(self.terms):
            groups[find(next(iter(terms)))].relations.append(index)
        return [b for b in groups.values() if b.relations]

    def _space(self, var: Key) -> tuple[dict[Key, int], np.ndarray]:
        """The connected set of unknowns ``var`` is in (each one's column) and an orthonormal basis of
        the row space of its equations restricted to them; kept until the blanked counts change."""
        if self._space_version != self._version:
            self._spaces, self._space_version = {}, self._version
        if var not in self._spaces:
            component, equations, stack = [var], set(), [var]
            seen = {var}
            while stack:
                for index in self.of.get(stack.pop(), []):
                    if index not in equations:
                        equations.add(index)
                        for member in self.terms[index]:
                            if member not in seen and not self.known(member):
                                seen.add(member)
                                component.append(member)
                                stack.append(member)
            space = ({v: j for j, v in enumerate(component)},
                     _row_basis(component, [self.terms[i] for i in sorted(equations)]))
            self._spaces.update(dict.fromkeys(component, space))
        return self._spaces[var]

    def determined(self, unknown: list[Key]) -> set[Key]:
        """The unknowns the equations give back exactly: those whose unit vector is in the row space
        of the equations of their connected set of unknowns (leverage 1)."""
        out = set()
        for var in unknown:
            column, basis = self._space(var)
            if (basis[:, column[var]] ** 2).sum() > 1 - 1e-8:
                out.add(var)
        return out

    def determines(self, vector: dict[Key, int]) -> bool:
        """Whether the counts give back the combination ``vector`` (count -> coefficient) exactly: in
        each connected set of unknowns it touches, its part lies in the row space of their equations."""
        parts: dict[int, tuple[dict[Key, int], np.ndarray, np.ndarray]] = {}
        for var, coefficient in vector.items():
            if not self.known(var):
                column, basis = self._space(var)
                _, _, x = parts.setdefault(id(basis), (column, basis, np.zeros(len(column))))
                x[column[var]] = coefficient
        return all(np.abs(x - basis.T @ (basis @ x)).max() < 1e-8 for _, basis, x in parts.values())

    def violations(self, block: _Block) -> list[Violation]:
        """Every count of ``block`` an attacker gets back, or a small sum of unknowns (:class:`Violation`)."""
        unknown = [v for v in block.variables if not self.known(v)]
        found = self.determined(unknown) if unknown else set()
        out = []
        for var in unknown:
            if var in found and _small(self.values[var], self.threshold):
                out.append(Violation("group", var))
            elif var in found and self.changed(var):
                out.append(Violation("changed", var))
        hidden = set(unknown) - found
        out += [Violation("changed", v) for v in block.variables if v not in hidden and self.differenced(v)]
        out += [Violation("inside", inner, others=(outer,)) for outer in block.variables if self.known(outer)
                for inner in self.inside(outer)
                if self.known(inner) and _small(self.values[outer] - self.values[inner], self.threshold)]
        members = set(block.variables)
        out += [Violation("changed", now, others=(before,)) for now, before in self.pairs
                if now in members and _small(self.values[now] - self.values[before], self.threshold)
                and self.determines({now: 1, before: -1})]
        for vector, value in self.combos:
            first, *rest = vector
            if first in members and _small(value, self.threshold) and self.determines(vector):
                out.append(Violation("pupils", first, others=tuple(rest)))
        for index in block.relations:
            total = self.total(index)
            if total in hidden:
                continue
            rest = [(v, c) for v, c in self.terms[index].items() if v != total and v in hidden]
            if len(rest) > 1 and _small(sum(-c * self.values[v] for v, c in rest), self.threshold):
                out.append(Violation("sum", relation=index))
        return out

    def candidates(self, violation: Violation, block: _Block) -> list[Key]:
        """Published cells to blank next: the cell itself, then from the sums that give it back (those
        joining it to other unknowns, nearest first), each sum's smallest part first (its total first
        where the sum prefers it), then its total."""
        cell = violation.cell
        start = [cell] if cell is not None else [v for v in self.terms[violation.relation] if not self.known(v)]
        start += list(violation.others)
        out: list[Key] = [cell] if cell is not None and self.hideable(cell) else []
        for index in self._reaching(start, [violation.relation] if cell is None else []):
            total, parts = self.total(index), [v for v in self.terms[index] if v != self.total(index)]
            ordered = sorted((p for p in parts if self.hideable(p)), key=lambda p: (self.values[p], str(p)))
            ordered = [total, *ordered] if self.prefer[index] else [*ordered, total]
            out += [v for v in ordered if self.hideable(v) and v not in out]
        return out

    def _reaching(self, start: list[Key], first: list[int]) -> list[int]:
        """The sums joining the unknowns ``start`` to other unknowns, breadth first (after ``first``)."""
        order, done, seen, queue = list(first), set(first), set(start), list(start)
        while queue:
            var = queue.pop(0)
            for index in self.of.get(var, []):
                if index in done:
                    continue
                done.add(index)
                order.append(index)
                for member in self.terms[index]:
                    if member not in seen and not self.known(member):
                        seen.add(member)
                        queue.append(member)
        return order

    def protect(self, block: _Block, tries: int = 8) -> list[Violation]:
        """Blank published cells of ``block`` one at a time until the audit finds nothing; what could
        not be protected (should be nothing)."""
        for _ in range(len(block.variables) + 1):
            found = self.violations(block)
            if not found:
                return []
            pick = None
            for violation in found:
                options = self.candidates(violation, block)
                pick = next((c for c in options[:tries] if self._mends(c, violation, block)), None)
                pick = pick or (options[0] if options else None)
                if pick is not None:
                    break
            if pick is None:
                return found
            self.blank(pick, SECONDARY)
        return self.violations(block)

    def _mends(self, candidate: Key, violation: Violation, block: _Block) -> bool:
        added = self.blank(candidate, SECONDARY)
        try:
            return violation not in self.violations(block)
        finally:
            for var in added:
                del self.blanked[var]
            self._version += 1


def _row_basis(component: list[Key], equations: list[dict[Key, int]]) -> np.ndarray:
    """An orthonormal basis (rows) of the row space of ``equations`` restricted to ``component``
    (the rest of each equation is known)."""
    column = {v: j for j, v in enumerate(component)}
    matrix = np.zeros((len(equations), len(component)))
    for i, terms in enumerate(equations):
        for var, coefficient in terms.items():
            if var in column:
                matrix[i, column[var]] = coefficient
    if not equations:
        return matrix
    _, singular, rows = np.linalg.svd(matrix, full_matrices=False)
    rank = int((singular > max(matrix.shape) * 1e-10 * (singular[0] if len(singular) else 0)).sum())
    return rows[:rank]


def state(linked: Linked, blanked: dict[Key, str]) -> dict:
    """What the next publication's audit needs of this one (kept privately, never published): every
    true count with whether it was shown, the sums between them and the groups of pupils no table
    shows (JSON-ready)."""
    cells = [[list(var), None if not _finite(value) else value,
              bool(linked.rows.get(var)) and var not in blanked and _finite(value)]
             for var, value in linked.values.items()]
    relations = [[list(r.total), [list(p) for p in r.parts], r.prefer_total] for r in linked.relations]
    return {"cells": cells, "relations": relations, "groups": [[list(m) for m in g] for g in linked.groups]}


def link(linked: Linked, previous: dict[Key, float] | None = None,
         threshold: int = SUPPRESSION_THRESHOLD, earlier: list[dict] | None = None,
         ) -> tuple[dict[Key, str], list[Violation]]:
    """Which cells to blank so that no combination of published counts, in this publication or
    with ``previous`` (key -> value as last published) and the ``earlier`` publications' counts and
    sums (:func:`state`, each distinct one), gives back a group of 1 to ``threshold - 1`` pupils; and
    what could not be protected (should be nothing).

    1. **Primary**: a published count of 1 to ``threshold - 1``.
    2. **Change**: a published count that moved by 1 to ``threshold - 1`` since ``previous``.
    3. **Exact audit** (:class:`_Audit`), per trial: known counts are the published ones and those
       blanked now but published before with the same value; every other count (blanked, or never
       published: a one-school round's school, pupils lost, pupils in no school row) is unknown.
       A violation is an unknown count the sums give back exactly that is 1 to ``threshold - 1``
       or 1 to ``threshold - 1`` away from its last published value, or the unknown parts of one
       sum whose total is known (or given back) together holding 1 to ``threshold - 1``.
       With ``earlier``, its counts and sums join the equations (a count with the same key and value
       is the same count; one shown then is known); an earlier count given back, or a count whose
       change since then (now less then) is given back and is 1 to ``threshold - 1``, is a violation.
    4. **Secondary**, until the audit passes: for each violation one more published count is
       blanked, from the sums holding it, smallest first (the first that mends it, else the first).
    Blanking a cell blanks its row (both arms of a school, in every table showing it). The
    result is keyed by variable and by every key publications give it.
    """
    audit = _Audit(linked, previous or {}, threshold, earlier)
    for var in [v for v in linked.rows if v not in audit.blanked]:
        if _finite(audit.values[var]) and _small(audit.values[var], threshold):
            audit.blank(var, PRIMARY)
        elif audit.changed(var):
            audit.blank(var, CHANGED)
    unprotected = [v for block in audit.blocks() for v in audit.protect(block)]
    blanked = dict(audit.blanked)
    for var, reason in audit.blanked.items():
        for key in linked.keys.get(var, []):
            blanked.setdefault(key, reason)
    return blanked, unprotected


# Sentences of the models' notes that quote a count of pupils, said without it: a count in a note is
# a published count like any other (an FSM count beside pupils_analysed gives the non-FSM group).
_PUPIL_COUNTS = [
    (re.compile(r"only \d+ pupils analysed for (\d+) fixed effects"), r"too few pupils analysed for \1 fixed effects"),
    (re.compile(r"\d+ FSM pupils analysed in \d+ schools? with both arms"), "too few FSM pupils or schools with both arms"),
    (re.compile(r"(?<!at least )\b\d+ (FSM |analysed )?pupils?\b"), r"some \1pupils"),
]


_ATTRITION = re.compile(r"\battrition (\d+(?:\.\d+)?)%")


def attrition_band(pct: float) -> str:
    """The EEF attrition band ``pct`` falls in ("up to 10%", "20-30%", "over 50%"): what a note may
    say of it, since the exact figure beside the published randomised (or analysed) count gives the
    pupils lost back, and the count of pupils lost is blanked when it is 1 to 9."""
    lower = 0.0
    for upper, _ in ATTRITION_RATINGS:
        if pct <= upper:
            return f"up to {upper:g}%" if lower == 0 else f"{lower:g}-{upper:g}%"
        lower = upper
    return f"over {lower:g}%"


def without_pupil_counts(text: object) -> object:
    """A note with every count of pupils taken out (the needs "at least 30 pupils" stay), and the
    attrition it quotes said as its EEF band only."""
    if not isinstance(text, str):
        return text
    for pattern, replacement in _PUPIL_COUNTS:
        text = pattern.sub(replacement, text)
    return _ATTRITION.sub(lambda m: f"attrition {attrition_band(float(m.group(1)))}", text)
