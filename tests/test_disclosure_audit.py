"""Disclosure control checked by an independent audit (the tau-ARGUS one): every published count is a sum
of pupil groups (one school's intervention, control or lost pupils in one round); for every group or
count of 1 to 9 pupils, and every count that moved by 1 to 9 since the last publication, linear
programming over all published counts (x >= 0) must leave it a range, never one value. Run on the red
team's routes (a blanked round given back as all rounds minus a one-school round's school, then
differenced against the last publication) and on random small trials (Hypothesis: 1 to 3 rounds, 1 to 6
schools each, schools in two rounds, 0 to 30 pupils per arm, and a second publication)."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from datetime import datetime
from html import unescape

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from microtrials.publish import site
from tests.helpers.examples import examples
from tests.test_disclosure_linked import ALL, build, publication

THRESHOLD = 10
ARMS = ("n_intervention", "n_control", "lost")
Atom = tuple  # (trial, round, school, arm index): one group of pupils


@dataclass
class Cell:
    """One count: the groups it adds up, its true value, and what was published (None: blank)."""

    name: str
    groups: dict  # Atom -> pupils in it
    value: float
    shown: float | None


def _groups(data: dict, trial: str, rounds: list[str], arms: tuple[int, ...], schools=None) -> dict:
    return {(trial, r, s, a): data[trial][r][s][a] for r in rounds for s in data[trial][r]
            if schools is None or s in schools for a in arms}


def cells(data: dict, table: pd.DataFrame, per_school: list[pd.DataFrame]) -> list[Cell]:
    """Every count of a publication (evidence rows, every schools.csv row, and the groups no table
    shows: each school's arms in a one-school round, the pupils lost, each school's pupils analysed)
    with what was published."""
    out = []
    for row, frame in zip(table.to_dict("records"), per_school, strict=True):
        t, r = row["intervention"], row["round"]
        rounds = list(data[t]) if r == ALL else [r]
        for column, arms in (("pupils_analysed", (0, 1)), ("pupils_randomised", (0, 1, 2))):
            groups = _groups(data, t, rounds, arms)
            out.append(Cell(f"{t}/{r} {column}", groups, sum(groups.values()), _shown(row[column])))
        lost = _groups(data, t, rounds, (2,))
        out.append(Cell(f"{t}/{r} lost", lost, sum(lost.values()), None))
        for school in frame.to_dict("records"):
            for arm, column in enumerate(ARMS[:2]):
                groups = _groups(data, t, [school["school_round"]], (arm,), {school["school_urn"]})
                out.append(Cell(f"{t}/{r} schools.csv {school['school_urn']} {school['school_round']} {column}",
                                groups, sum(groups.values()), _shown(school[column])))
    for t, rounds in data.items():
        for r, schools in rounds.items():
            for s, counts in schools.items():
                out += [Cell(f"{t}/{r} {s} {ARMS[a]}", {(t, r, s, a): counts[a]}, counts[a], None) for a in range(3)]
                both = {(t, r, s, a): counts[a] for a in (0, 1)}  # the school's pupils analysed
                out.append(Cell(f"{t}/{r} {s} analysed", both, sum(both.values()), None))
    return out


def _shown(value: object) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def bounds(published: list[Cell], target: Cell, weights: dict | None = None) -> tuple[float, float]:
    """The least and greatest value of ``target`` (its groups' sum, or with ``weights`` their weighted
    sum) given every published count, every group >= 0."""
    atoms = sorted({a for c in published for a in c.groups} | set(target.groups))
    column = {a: j for j, a in enumerate(atoms)}
    a_eq = [[0.0] * len(atoms) for _ in published]
    for i, cell in enumerate(published):
        for atom in cell.groups:
            a_eq[i][column[atom]] = 1.0
    objective = [0.0] * len(atoms)
    for atom in target.groups:
        objective[column[atom]] = 1.0 if weights is None else weights[atom]
    b_eq = [c.shown for c in published]
    low = linprog(objective, A_eq=a_eq or None, b_eq=b_eq or None, bounds=(0, None), method="highs")
    high = linprog([-x for x in objective], A_eq=a_eq or None, b_eq=b_eq or None, bounds=(0, None), method="highs")
    assert low.status in (0, 3) and high.status in (0, 3), (low.message, high.message)
    return (-float("inf") if low.status == 3 else low.fun), (float("inf") if high.status == 3 else -high.fun)


def audit(now: list[Cell], before: list[Cell] | None = None) -> list[str]:
    """What an attacker gets back: a count or group of 1 to 9 pinned to one value, or a count pinned
    to a value 1 to 9 away from the one last published (the counts published last time with the
    same value as now count as known); and any published difference of 1 to 9 between two counts
    where one counts a subset of the other's pupils, in this publication or between the two."""
    shown_before = {c.name: c.shown for c in before or [] if c.shown is not None}
    known = [c for c in now if c.shown is not None]
    known += [Cell(c.name, c.groups, c.value, c.value) for c in now
              if c.shown is None and shown_before.get(c.name) == c.value]
    found = []
    for cell in now:
        last = shown_before.get(cell.name)
        small = 0 < cell.value < THRESHOLD
        moved = last is not None and 0 < abs(cell.value - last) < THRESHOLD
        if small or moved:
            low, high = bounds(known, cell)
            if high - low < 0.5:
                found.append(f"{cell.name} = {cell.value:g} ({'small' if small else f'last {last:g}'}) is pinned")
    shown = [c for c in now if c.shown is not None]
    found += _differences(shown, shown)
    if before:
        found += _differences(shown, [c for c in before if c.shown is not None])
    return found


def _differences(these: list[Cell], those: list[Cell]) -> list[str]:
    """Pairs where one count's pupils are a subset of the other's (pupils numbered within their group,
    so a group that grew keeps its first pupils) and the difference is 1 to 9."""
    out = []
    for a in these:
        for b in those:
            for big, little in ((a, b), (b, a)):
                inside = all(big.groups.get(g, 0) >= n for g, n in little.groups.items())
                if inside and 0 < big.shown - little.shown < THRESHOLD:
                    out.append(f"{big.name} {big.shown:g} - {little.name} {little.shown:g}")
    return sorted(set(out))


def protect(data: dict, previous: dict | None = None, earlier: list[dict] | None = None,
            ) -> tuple[pd.DataFrame, list[pd.DataFrame], list[str], dict]:
    evidence, per_trial = build(data)
    problems: list[str] = []
    table, per_school, state = site.protection(evidence, per_trial, previous, problems, earlier)
    return table, per_school, problems, state


def audit_two(first: dict, later: dict) -> list[str]:
    """The independent audits of two successive publications of ``first`` then ``later``, the second
    protected as the pipeline protects it (against the first's shown counts and its kept state)."""
    t1, s1, p1, state = protect(first)
    t2, s2, p2, _ = protect(later, site.shown_counts(t1, s1), [state])
    before, now = cells(first, t1, s1), cells(later, t2, s2)
    found = audit(before) + audit(now, before) + audit_across(before, now)
    return found + [p for p in p1 + p2 if "could not be protected" in p]


def audit_across(before: list[Cell], now: list[Cell]) -> list[str]:
    """Both publications at once, as an attacker holding both sees them: every count shown in either
    is an equation; a group whose size is the same in both is one unknown, a group that changed is
    two (then and now). Every group or count of 1 to 9 (then or now), and every change of a group
    of 1 to 9, must keep a range of values."""
    def then(cell: Cell) -> Cell:  # the first publication's groups, apart from the second's where they changed
        groups = {g if now_size.get(g) == n else ("then", *g): n for g, n in cell.groups.items()}
        return Cell("then " + cell.name, groups, cell.value, cell.shown)
    now_size = {g: n for c in now for g, n in c.groups.items()}
    earlier = [then(c) for c in before]
    shown = [c for c in now + earlier if c.shown is not None]
    found = []
    for cell in now + earlier:
        if 0 < cell.value < THRESHOLD:
            low, high = bounds(shown, cell)
            if high - low < 0.5:
                found.append(f"{cell.name} = {cell.value:g} is pinned by both publications")
    sizes = {g: n for c in earlier for g, n in c.groups.items() if g[0] == "then"}
    for group, size in sizes.items():
        change = now_size.get(group[1:], 0) - size
        if 0 < abs(change) < THRESHOLD:
            weights = {group[1:]: 1.0, group: -1.0}
            low, high = bounds(shown, Cell("change", weights, change, None), weights)
            if high - low < 0.5:
                found.append(f"{group[1:]} changed by {change:g}: pinned by both publications")
    return found


# --- the red team's routes -------------------------------------------------------------------

SUMMER, AUTUMN = "2026 Summer", "2026 Autumn"
#: the first publication: one round of three schools, 90 pupils (no all-rounds row yet)
ROUTE = {"Peer tutoring": {SUMMER: {"555502": (10, 10, 0), "555503": (20, 20, 0), "555504": (15, 15, 0)}}}


def route_later() -> dict:
    """The next: a school of 6 joins the round (90 -> 96) and a one-school round of 20 starts, so an
    all-rounds row (116) and an all-rounds schools.csv appear."""
    later = {t: {r: dict(s) for r, s in rounds.items()} for t, rounds in ROUTE.items()}
    later["Peer tutoring"][SUMMER]["555505"] = (3, 3, 0)
    later["Peer tutoring"][AUTUMN] = {"555509": (10, 10, 0)}  # a one-school round: no school rows of its own
    return later


def test_the_route_gives_the_six_back_without_the_one_school_round_modelled():
    """The red team's three numbers: all rounds 116 - the one-school round's school (10 + 10, from the
    all-rounds schools.csv) = the blanked round's 96; 96 - last time's 90 = the 6 who joined."""
    evidence, per_trial = build(route_later())
    rows = evidence.set_index("round")["pupils_analysed"]
    assert rows[ALL] - 20 - 90 == 6 and rows[SUMMER] == 96
    assert list(per_trial[("Peer tutoring", "Test score", ALL)]["n_control"])[0] == 10


def test_the_red_team_route_across_two_publications_is_closed(tmp_path):
    out = tmp_path / "out"
    first, kept = publication(ROUTE, out, None, datetime(2026, 10, 1, 9))
    later, _ = publication(route_later(), out, kept, datetime(2026, 11, 1, 9))
    evidence = pd.read_csv(io.BytesIO(later["evidence_table.csv"]), encoding="utf-8-sig", dtype={"round": str})
    analysed = evidence.set_index("round")["pupils_analysed"]
    folder = site.trial_folders(site.page_names(evidence))[0][list(evidence["round"]).index(ALL)]
    everyone = pd.read_csv(io.BytesIO(later[f"{folder}/schools.csv"]), encoding="utf-8-sig", dtype=str,
                           keep_default_na=False).set_index("school_urn")
    # the three numbers the red team used can no longer all be read
    assert analysed.isna()[SUMMER]
    assert analysed.isna()[ALL] or everyone.loc["555509", "n_control"] == "" or analysed.isna()[AUTUMN]
    assert audit_two(ROUTE, route_later()) == []
    # the blanked 96 is not called small on its page (it was blanked to protect the 6)
    summer = site.trial_folders(site.page_names(evidence))[0][list(evidence["round"]).index(SUMMER)]
    page = " ".join(unescape(re.sub(r"<[^>]+>", " ", later[f"{summer}/index.html"].decode())).split())
    assert "fewer than 10 pupils" not in page
    assert "number of pupils not published: a group under 10 pupils, or blanked to protect one" in page


def test_the_red_team_route_within_one_publication_is_closed():
    """One publication: a suppressed school of 10 (5 + 5) beside a one-school round; no subtraction
    of its counts gives the school's arms, its round or the pupils lost back."""
    data = {"Peer tutoring": {SUMMER: {"555502": (5, 5, 0), "555503": (30, 31, 2), "555504": (2, 9, 0)},
                              AUTUMN: {"555509": (10, 10, 0)}}}
    table, per_school, problems, _ = protect(data)
    assert audit(cells(data, table, per_school)) == [] and not problems


def test_the_audit_finds_what_is_left_open():
    """The independent audit is not blind: publishing every count of the route unprotected fails it."""
    evidence, per_trial = build(route_later())
    naked = evidence.assign(round=evidence["round"].astype(str))
    frames = [per_trial[("Peer tutoring", "Test score", r)] for r in naked["round"]]
    frames = [f if len(f) > 1 else f.iloc[0:0] for f in frames]
    found = audit(cells(route_later(), naked, frames), cells(ROUTE, *build_naked(ROUTE)))
    assert any("pinned" in f for f in found) and any(" - " in f for f in found)


def build_naked(data: dict) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    evidence, per_trial = build(data)
    frames = [per_trial[(t, "Test score", r)] for t, r in zip(evidence["intervention"], evidence["round"], strict=True)]
    return evidence, [f if len(f) > 1 else f.iloc[0:0] for f in frames]


# --- random small trials ---------------------------------------------------------------------

POOL = [f"77770{i}" for i in range(8)]


@st.composite
def two_publications(draw) -> tuple[dict, dict]:
    """A trial of 1 to 3 rounds of 1 to 6 schools (drawn from one pool, so some run in two rounds),
    0 to 30 pupils per arm, 0 to 3 lost; then the same trial with schools joining or withdrawn and
    groups growing or shrinking."""
    arm, lost = st.integers(0, 30), st.integers(0, 3)
    first: dict = {}
    for r in range(draw(st.integers(1, 3))):
        urns = draw(st.lists(st.sampled_from(POOL), min_size=1, max_size=6, unique=True))
        first[f"Round {r + 1}"] = {u: draw(st.tuples(arm, arm, lost).filter(lambda c: c[0] + c[1] > 0))
                                   for u in urns}
    later = {r: dict(s) for r, s in first.items()}
    for _ in range(draw(st.integers(0, 3))):
        r = draw(st.sampled_from(sorted(later)))
        urn = draw(st.sampled_from(POOL))
        if draw(st.integers(0, 5)) == 0 and urn in later[r] and len(later[r]) > 1:
            del later[r][urn]  # a school withdrawn
            continue
        before = later[r].get(urn, (0, 0, 0))
        move = draw(st.tuples(st.integers(-3, 9), st.integers(-3, 9), st.integers(-1, 2)))
        later[r][urn] = tuple(max(0, b + g) for b, g in zip(before, move, strict=True))
        if sum(later[r][urn][:2]) == 0:
            later[r][urn] = (1, 0, later[r][urn][2])
    return {"Trial": first}, {"Trial": later}


@settings(max_examples=examples(25))
@given(two_publications())
def test_no_small_group_is_recoverable_from_random_publications(pair):
    first, later = pair
    assert audit_two(first, later) == []


@pytest.mark.slow
@settings(max_examples=examples(100), derandomize=True)  # 100 pairs (~36 s), the same each run (see below)
@given(two_publications())
def test_no_small_group_is_recoverable_from_many_random_publications(pair):
    first, later = pair
    assert audit_two(first, later) == []


@pytest.mark.xfail(strict=True, reason="known: the all-rounds randomised count of the second publication is a "
                   "'changed' violation secondary suppression cannot mend, so the run reports 'could not be "
                   "protected' among the publication's problems (the independent audits find nothing recoverable)")
def test_a_school_leaving_one_of_three_rounds_with_one_pupil_arms_is_protected():
    """Found by the random test above with another seed (session 6); kept here until it is mended."""
    first = {"Trial": {"Round 1": {"777700": (0, 27, 0), "777701": (22, 24, 1)},
                       "Round 2": {"777700": (0, 10, 0), "777701": (0, 28, 0), "777702": (0, 14, 1),
                                   "777703": (0, 10, 2)},
                       "Round 3": {"777700": (0, 7, 2), "777701": (0, 1, 3), "777702": (0, 1, 0),
                                   "777703": (0, 1, 2)}}}
    later = {"Trial": {**first["Trial"], "Round 2": {k: v for k, v in first["Trial"]["Round 2"].items()
                                                     if k != "777700"}}}
    assert audit_two(first, later) == []


@pytest.mark.parametrize("rounds", [
    {"R1": {"777701": (5, 5, 0), "777702": (30, 30, 0)}},
    {"R1": {"777701": (4, 6, 1)}, "R2": {"777701": (20, 20, 0), "777702": (3, 3, 3)}},
    {"R1": {"777701": (12, 0, 0)}, "R2": {"777702": (1, 0, 0)}, "R3": {"777703": (30, 30, 5)}},
])
def test_no_small_group_is_recoverable_from_hand_picked_trials(rounds):
    data = {"Trial": rounds}
    assert audit_two(data, data) == []


def test_a_second_outcome_of_the_same_pupils_does_not_give_the_pupils_lost_back():
    """Reading and maths outcomes of one trial count the same 100 pupils randomised: reading lost 5,
    maths 12. Maths' published 100 less reading's analysed 95 would be reading's 5 lost pupils."""
    from tests.test_disclosure_linked import _evidence_row, _school_rows
    schools = {"888801": (30, 30, 0), "888802": (20, 20, 0)}
    rows, per_trial = [], {}
    for measure, lost in (("Reading", 5), ("Maths", 12)):
        row = _evidence_row("Shared reading", "2025-26", schools)
        row.update(outcome_measure=measure, pupils_randomised=100, pupils_analysed=100 - lost)
        rows.append(row)
        frame = pd.DataFrame(_school_rows(schools, "2025-26"))
        frame.loc[0, "n_control"] -= lost  # the pupils with no result for this outcome
        per_trial[("Shared reading", measure, "2025-26")] = frame
    table, _ = site.protected_publication(pd.DataFrame(rows), per_trial)
    shown = table.set_index("outcome_measure")
    assert pd.isna(shown.loc["Reading", "pupils_randomised"])  # 100 - 95 = 5 lost
    assert pd.isna(shown.loc["Maths", "pupils_randomised"]) or pd.isna(shown.loc["Reading", "pupils_analysed"])


def test_the_audit_across_two_publications_sees_a_lifted_complement():
    """The independent two-publication audit is not blind: the second publication protected on its
    own (no earlier state) shows the school blanked last time to protect another (70 - 40 - 24 = 6)."""
    first = {"Trial": {"R1": {"777700": (20, 20, 0), "777701": (12, 12, 0), "777702": (3, 3, 0)}}}
    later = {"Trial": {"R1": {**first["Trial"]["R1"], "777703": (6, 6, 0)}}}
    t1, s1, _, state = protect(first)
    alone = protect(later, site.shown_counts(t1, s1))
    joint = protect(later, site.shown_counts(t1, s1), [state])
    before = cells(first, t1, s1)
    assert any("777702" in f for f in audit_across(before, cells(later, alone[0], alone[1])))
    assert audit_across(before, cells(later, joint[0], joint[1])) == []


def test_a_school_missing_a_few_scores_of_one_outcome_is_not_given_back():
    """Red team: one school's intervention arm analysed 20 for maths and 17 for reading (the same
    pupils, 3 with no reading score): both published, 20 - 17 = 3. One of them is blanked, and the
    blank is protected like any other (its trial's total less the other schools is no small group)."""
    from tests.test_disclosure_linked import _evidence_row, _school_rows
    schools = {"888801": (30, 30, 0), "888802": (20, 20, 0), "888803": (25, 26, 0)}
    rows, per_trial = [], {}
    for measure, missing in (("Maths", 0), ("Reading", 3)):
        row = _evidence_row("Shared reading", "2025-26", schools)
        row.update(outcome_measure=measure, pupils_randomised=151, pupils_analysed=151 - missing)
        rows.append(row)
        frame = pd.DataFrame(_school_rows(schools, "2025-26"))
        frame.loc[1, "n_intervention"] -= missing
        per_trial[("Shared reading", measure, "2025-26")] = frame
    table, per_school = site.protected_publication(pd.DataFrame(rows), per_trial)
    shown = {m: f.set_index("school_urn")["n_intervention"] for m, f in zip(table["outcome_measure"], per_school,
                                                                             strict=True)}
    maths, reading = shown["Maths"].get("888802"), shown["Reading"].get("888802")
    assert pd.isna(maths) or pd.isna(reading)
    # whichever is blanked, its row's total less its other schools does not give it back
    for measure, frame in zip(table["outcome_measure"], per_school, strict=True):
        total = table.set_index("outcome_measure").loc[measure, "pupils_analysed"]
        known = frame[["n_intervention", "n_control"]].apply(pd.to_numeric, errors="coerce")
        assert pd.isna(total) or known.isna().any(axis=1).sum() != 1


def test_pupils_with_no_row_for_the_second_outcome_are_not_given_back_by_the_totals():
    """Red team F4: 100 pupils sent for PUMA, 96 of them for the times-tables check (no row at all for
    4, so the randomised counts differ too): PUMA's 100 analysed less TTC's 96 would be the 4."""
    from tests.test_disclosure_linked import _evidence_row, _school_rows
    schools = {"200031": (13, 12, 0), "200032": (25, 25, 0), "200033": (12, 13, 0)}
    rows, per_trial = [], {}
    for measure, missing in (("PUMA", 0), ("TTC", 2)):
        row = _evidence_row("Maths mastery", "2025-26", schools)
        row.update(outcome_measure=measure, pupils_randomised=100 - 2 * missing, pupils_analysed=100 - 2 * missing)
        rows.append(row)
        frame = pd.DataFrame(_school_rows(schools, "2025-26"))
        frame.loc[0, ["n_intervention", "n_control"]] -= missing
        per_trial[("Maths mastery", measure, "2025-26")] = frame
    table, per_school = site.protected_publication(pd.DataFrame(rows), per_trial)
    analysed = table.set_index("outcome_measure")["pupils_analysed"]
    randomised = table.set_index("outcome_measure")["pupils_randomised"]
    assert analysed.isna().any() and (randomised.isna().any() or analysed.isna().all())
    shown = [f.set_index("school_urn").loc["200031", "n_intervention"] for f in per_school]
    assert any(pd.isna(v) for v in shown)
