"""Disclosure control survives subtraction: no published total gives a blanked school's count back."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pandas as pd
import pytest

from microtrials.publish import disclosure
from microtrials.publish.disclosure import protect_schools, protect_totals, without_pupil_counts
from microtrials.publish.site import build_site, trial_slug

T = 10


def _schools(counts):
    return pd.DataFrame({"school_urn": [f"1110{i:02d}" for i in range(len(counts))],
                         "n_intervention": [a for a, _ in counts], "n_control": [b for _, b in counts],
                         "g": [0.1] * len(counts), "ci_low": [-0.1] * len(counts), "ci_high": [0.3] * len(counts),
                         "eb_g": [0.1] * len(counts), "note": [""] * len(counts)})


def _evidence(name, counts):
    analysed = sum(a + b for a, b in counts)
    return dict(intervention=name, outcome_measure="Test", schools=len(counts), schools_both_arms=len(counts),
                pupils_randomised=analysed + 2, pupils_analysed=analysed, attrition_pct=1.0, effect_size=0.2,
                ci_low=0.0, ci_high=0.4, p_value=0.05, months_progress=3, tau=0.0, i2=0.0, pi_low=np.nan,
                pi_high=np.nan, status="published", p_new_school_benefits=np.nan, fsm_effect_size=np.nan, fsm_ci_low=np.nan, fsm_ci_high=np.nan,
                evidence_strength=3, notes="", fsm_months_progress=np.nan)


CASES = {
    "one small school (the issue's 148 - 144)": [(40, 38), (30, 32), (2, 2), (1, 3)][:3] + [(0, 0)][:0],
    "one small school of four": [(40, 38), (35, 31), (30, 29), (2, 2)],
    "two tiny schools": [(40, 38), (3, 2), (2, 2), (50, 41)],
    "all small": [(3, 2), (2, 2), (4, 1)],
    "one school": [(3, 3)],
    "one big school": [(30, 25)],
    "nothing small": [(20, 21), (30, 31)],
}


def _published():
    evidence = pd.DataFrame([_evidence(name, counts) for name, counts in CASES.items()])
    schools = {(name, "Test"): _schools(counts) for name, counts in CASES.items()}
    report = pd.DataFrame({"file_name": [], "status": [], "school_urn": []})
    return build_site(evidence, schools, report, "d", "r")


def test_no_published_total_reveals_a_blanked_school():
    files = _published()
    table = pd.read_csv(io.BytesIO(files["evidence_table.csv"]), encoding="utf-8-sig")
    for row in table.itertuples():
        parts = pd.read_csv(io.BytesIO(files[f"{trial_slug(row.intervention, 'Test')}/schools.csv"]),
                            encoding="utf-8-sig", dtype={"school_urn": str})
        counts = parts[["n_intervention", "n_control"]]
        # every published count is 0 or at least T
        for value in list(counts.to_numpy().ravel()) + [row.pupils_analysed, row.pupils_randomised]:
            assert pd.isna(value) or value == 0 or value >= T, (row.intervention, value)
        blanked = counts.isna().any(axis=1)
        if pd.isna(row.pupils_analysed):
            continue
        difference = row.pupils_analysed - counts.fillna(0).to_numpy().sum()
        if len(parts) == 0:
            continue  # a one-school trial publishes no per-school rows
        # differencing the total against the published parts gives back only a group of >= 2 schools, >= T pupils
        if blanked.any():
            assert blanked.sum() >= 2 and difference >= T, row.intervention
        else:
            assert difference == 0, row.intervention
        # and no subset of published parts plus the total isolates one blanked school
        published = counts[~blanked].sum(axis=1).tolist()
        for k in range(len(published) + 1):
            for subset in itertools.combinations(published, k):
                rest = row.pupils_analysed - sum(subset)
                assert not (0 < rest < T), row.intervention


def test_one_school_trial_publishes_no_school_rows_and_no_small_counts():
    files = _published()
    for name in ("one school", "one big school"):
        parts = pd.read_csv(io.BytesIO(files[f"{trial_slug(name, 'Test')}/schools.csv"]), encoding="utf-8-sig")
        assert len(parts) == 0
        assert b"111000" not in files[f"{trial_slug(name, 'Test')}/index.html"]
    table = pd.read_csv(io.BytesIO(files["evidence_table.csv"]), encoding="utf-8-sig").set_index("intervention")
    assert pd.isna(table.loc["one school", "pupils_analysed"]) and pd.isna(table.loc["one school", "attrition_pct"])
    assert table.loc["one big school", "pupils_analysed"] == 55


def test_secondary_suppression_picks_the_next_smallest_school():
    out, blanked = protect_schools(_schools([(40, 38), (35, 31), (30, 29), (2, 2)]))
    assert blanked == ["111002", "111003"]  # the small one, then the next smallest (59 pupils)
    row = out.set_index("school_urn").loc["111002"]
    assert pd.isna(row["n_intervention"]) and pd.isna(row["g"])
    # the same words for the small school and the one blanked to protect it (GSS: one symbol for both)
    assert set(out["suppressed"]) - {""} == {disclosure.BLANKED}
    assert "59" not in row["note"] and "2" not in row["note"]


def test_a_blanked_note_never_quotes_a_small_count():
    frame = _schools([(7, 0), (40, 38), (35, 30)])
    frame.loc[0, "note"] = "one arm only (7 pupils in intervention)"
    out, _ = protect_schools(frame)
    assert "7" not in " ".join(out["note"].astype(str))


@pytest.mark.parametrize(("analysed", "blank"), [(8, True), (10, False), (0, False)])
def test_small_totals_are_blanked_with_attrition(analysed, blank):
    out = protect_totals({"pupils_randomised": 40, "pupils_analysed": analysed, "attrition_pct": 5.0})
    assert (out["pupils_analysed"] is None) == blank and (out["attrition_pct"] is None) == blank


@pytest.mark.parametrize(("note", "published"), [
    ("4 of 5 before deductions, the lowest of (MDES 0.31 SD -> 4, attrition 4.0% -> 5)",
     "4 of 5 before deductions, the lowest of (MDES 0.31 SD -> 4, attrition up to 10% -> 5)"),
    ("attrition 10.0% -> 5; attrition 10.4% -> 4", "attrition up to 10% -> 5; attrition 10-20% -> 4"),
    ("attrition 50.0% -> 1, attrition 61.5% -> 0", "attrition 40-50% -> 1, attrition over 50% -> 0"),
    ("attrition unknown", "attrition unknown"),
])
def test_a_note_says_attrition_only_as_its_band(note, published):
    # new-user finding: "121 analysed" with "attrition 4.0%" gave 126 randomised, 5 pupils lost
    assert without_pupil_counts(note) == published


# --- two publications: the last one's counts and sums join this one's audit ----------------------

def _trial(total: int, schools: dict[str, int]) -> disclosure.Linked:
    """One trial: its analysed total published in the evidence row, each school's count in schools.csv."""
    linked = disclosure.Linked()
    linked.add(("total",), total, ("E",))
    for urn, count in schools.items():
        linked.add((urn,), count, ("S", urn))
    linked.relations.append(disclosure.Relation(("total",), [(urn,) for urn in schools]))
    return linked


def _shown(linked: disclosure.Linked, blanked: dict) -> dict:
    return {var: value for var, value in linked.values.items() if var not in blanked}


def _publish(linked: disclosure.Linked, earlier: list[dict] | None = None, shown: dict | None = None):
    blanked, unprotected = disclosure.link(linked, shown or {}, earlier=earlier)
    assert unprotected == []
    return blanked, disclosure.state(linked, blanked)


def test_a_school_blanked_to_protect_another_stays_blanked_when_a_smaller_school_joins():
    """Red team: 70 - 40 - 24 = 6. The first publication blanks school C (6) and B (24) to protect it;
    the next one, with D (12) joining, would blank C and D and show B: with the first's total, C is back."""
    first = _trial(70, {"A": 40, "B": 24, "C": 6})
    blanked1, state1 = _publish(first)
    assert set(blanked1) == {("B",), ("C",)}
    second = _trial(82, {"A": 40, "B": 24, "C": 6, "D": 12})
    alone, _ = _publish(second, shown=_shown(first, blanked1))
    assert ("B",) not in alone  # on its own the second publication would show B ...
    blanked2, _ = _publish(second, [state1], _shown(first, blanked1))
    assert ("B",) in blanked2 and ("C",) in blanked2  # ... and with the first, B stays blanked
    shown = {v for v in second.values if v not in blanked2}
    assert not ({("total",), ("A",)} <= shown and ("B",) in shown)


def test_a_change_inside_blanked_schools_is_not_given_back():
    """Red team: the totals 139 and 78 + 60 of two publications differ by one pupil inside schools
    blanked in both: the change (now less then) of 1 to 9 pupils must not be had by subtraction."""
    first = _trial(139, {"A": 79, "B": 30, "C": 25, "D": 5})
    blanked1, state1 = _publish(first)
    second = _trial(140, {"A": 79, "B": 30, "C": 25, "D": 6})
    blanked2, _ = _publish(second, [state1], _shown(first, blanked1))
    audit = disclosure._Audit(second, _shown(first, blanked1), 10, [state1])
    audit.blanked = dict(blanked2)
    # every count shown now and then, and the change of every count, is checked against the equations
    for now, before in audit.pairs:
        change = audit.values[now] - audit.values[before]
        assert not (0 < abs(change) < 10 and audit.determines({now: 1, before: -1})), (now, change)


def test_the_earlier_publication_alone_would_let_the_change_through():
    """Without the earlier publication's sums the audit cannot see the change above (the test is not empty)."""
    first = _trial(139, {"A": 79, "B": 30, "C": 25, "D": 5})
    blanked1, state1 = _publish(first)
    second = _trial(140, {"A": 79, "B": 30, "C": 25, "D": 6})
    alone, _ = _publish(second)
    audit = disclosure._Audit(second, _shown(first, blanked1), 10, [state1])
    audit.blanked = dict(alone)
    assert any(0 < abs(audit.values[n] - audit.values[b]) < 10 and audit.determines({n: 1, b: -1})
               for n, b in audit.pairs)


def test_state_round_trips_through_json():
    first = _trial(70, {"A": 40, "B": 24, "C": 6})
    blanked, state = _publish(first)
    import json
    again = json.loads(json.dumps(state))
    assert again == json.loads(json.dumps(disclosure.state(first, blanked)))
    assert sorted(tuple(c[0]) for c in again["cells"] if not c[2]) == [("B",), ("C",)]


def _schools_trial(total: int, schools: dict[str, tuple[int, int]]) -> disclosure.Linked:
    """One trial with two arms per school (each school's pupils a group no table shows)."""
    linked = disclosure.Linked()
    linked.add(("total",), total, ("E",))
    parts = []
    for urn, arms in schools.items():
        cells = [(urn, arm) for arm in ("i", "c")]
        for cell, count in zip(cells, arms, strict=True):
            linked.add(cell, count, ("S", urn))
        linked.groups.setdefault(tuple(cells))
        parts += cells
    linked.relations.append(disclosure.Relation(("total",), parts))
    return linked


@pytest.mark.parametrize("later", [
    {"A": (13, 12), "B": (13, 12), "C": (13, 12), "D": (13, 12), "E": (10, 10)},  # the small school grew
    {"A": (13, 12), "B": (13, 12), "C": (13, 12), "D": (13, 12), "F": (20, 20)},  # it left, a big one joined
])
def test_a_small_school_of_the_last_publication_is_not_given_back_by_this_ones_total(later):
    """Red team F1: last time 106 = A..D (25 each) + E (3 + 3), E and A blanked. Now every school
    but A is shown and the total moved by 10 or more: 106 - (now's total less the new rows) = 6."""
    first = _schools_trial(106, {"A": (13, 12), "B": (13, 12), "C": (13, 12), "D": (13, 12), "E": (3, 3)})
    blanked1, state1 = _publish(first)
    assert {("E", "i"), ("A", "i")} <= set(blanked1)
    second = _schools_trial(sum(map(sum, later.values())), later)
    alone, _ = _publish(second, shown=_shown(first, blanked1))
    joint, _ = _publish(second, [state1], _shown(first, blanked1))
    shown_alone = {v for v in second.values if v not in alone}
    shown_joint = {v for v in second.values if v not in joint}
    # on its own nothing is small, all is shown, and with last time's total E's 6 is back
    assert shown_alone == set(second.values)
    # with the last publication's sums and groups, the total or a school (A) stays blanked
    assert ("total",) not in shown_joint or not {("A", "i"), ("A", "c")} <= shown_joint
