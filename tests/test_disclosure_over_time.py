"""Disclosure control over three publications, as the publishing asset runs it: each publication is
audited against the kept states and last shown counts of the earlier ones (warehouse table
`disclosure_states`), so a school shown, then blanked, then shown again is compared with what it
showed first (red team: 20, blank, 25 gives the 5 who joined), however the output folder changed."""

from __future__ import annotations

from datetime import datetime

import duckdb
import pandas as pd

from microtrials.publish import history, publish, site
from tests.test_disclosure_linked import build

TRIAL, ROUND = "Peer tutoring", "2026 Summer"
BIG = {"555501": (30, 30, 0), "555502": (25, 25, 0), "555503": (40, 40, 0)}
SCHOOL = "555504"


def publication(con, out, data: dict, run: str, when: datetime) -> pd.DataFrame:
    """One publication as pipelines/assets/publishing.py makes it; the school table it published."""
    return published_tables(con, out, data, run, when)[1][ROUND.lower()]


def published_tables(con, out, data: dict, run: str, when: datetime) -> tuple[pd.DataFrame, dict]:
    """One publication as pipelines/assets/publishing.py makes it: the evidence table and each row's
    school table, indexed by round ('' for none)."""
    evidence, per_trial = build(data)
    kept = history.read_history(con)
    earlier = history.earlier_disclosure(con)
    previous = {**earlier.shown, **site.previous_counts(out, kept)}
    published, schools, state = site.protection(evidence, per_trial, previous, earlier=earlier.states)
    history.keep_disclosure_state(con, run, when, state, {**previous, **site.shown_counts(published, schools)})
    files = site.build_site(evidence, per_trial, pd.DataFrame(), "d", "r", previous=previous, earlier=earlier.states)
    publish.publish_folder(out, files)
    history.confirm_disclosure_state(con, run)
    history.append_history(con, published, when, site.published_schools(published, schools))
    rounds = [str(r) if isinstance(r, str) else "" for r in published["round"]]
    return published.set_index(pd.Index(rounds)), {r.lower(): s.set_index("school_urn") for r, s in zip(rounds, schools)}


def test_a_school_shown_blanked_and_shown_again_is_compared_with_what_it_first_showed(tmp_path):
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    out = tmp_path / "out"
    first = {TRIAL: {ROUND: {**BIG, SCHOOL: (10, 10, 0)}}}
    # a school of 3 + 3 joins: the smallest other school (ours, 20) is blanked to protect it
    second = {TRIAL: {ROUND: {**BIG, SCHOOL: (10, 10, 0), "555505": (3, 3, 0)}}}
    # the small school leaves again and ours grows by 5 pupils: 25 - 20 = 5 must not be had
    third = {TRIAL: {ROUND: {**BIG, SCHOOL: (13, 12, 0)}}}
    shown = [publication(con, out, data, f"run-{i}", datetime(2026, 10 + i, 1))
             for i, data in enumerate((first, second, third))]
    assert shown[0].loc[SCHOOL, "n_intervention"] == 10
    assert pd.isna(shown[1].loc[SCHOOL, "n_intervention"])  # blanked to protect 555505
    assert pd.isna(shown[2].loc[SCHOOL, "n_intervention"])  # 25 against the 20 shown first: blanked
    # the output folder alone (the second publication) never held the 20: the warehouse does
    key = (TRIAL.lower(), "test score", ROUND.lower(), SCHOOL, ROUND.lower(), "n_intervention")
    assert key not in site.previous_counts(out, None) and history.earlier_disclosure(con).shown[key] == 10


def test_without_the_kept_states_the_third_publication_would_show_it(tmp_path):
    """The test above is not empty: audited against the output folder alone, the third shows 25."""
    first = {TRIAL: {ROUND: {**BIG, SCHOOL: (10, 10, 0)}}}
    second = {TRIAL: {ROUND: {**BIG, SCHOOL: (10, 10, 0), "555505": (3, 3, 0)}}}
    third = {TRIAL: {ROUND: {**BIG, SCHOOL: (13, 12, 0)}}}
    out, previous = tmp_path / "out", {}
    for data in (first, second, third):
        evidence, per_trial = build(data)
        previous = site.previous_counts(out, None) if out.exists() else {}
        publish.publish_folder(out, site.build_site(evidence, per_trial, pd.DataFrame(), "d", "r", previous=previous))
    table, schools = site.protected_publication(*build(third), previous)
    assert schools[0].set_index("school_urn").loc[SCHOOL, "n_intervention"] == 13


FOUR = {f"55560{i}": (10, 10, 0) for i in range(1, 5)}
JOINS = {"555605": (3, 3, 0)}


def test_naming_a_single_round_trials_round_keeps_it_compared_with_what_it_published_unnamed(tmp_path):
    """Red team (session 6, F2): 80 published with no round; the officer then names the round
    '2025-26' and a school of 3 + 3 joins: 86 - 80 gave the 6 (the counts were keyed by round)."""
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    out = tmp_path / "out"
    first, _ = published_tables(con, out, {TRIAL: {"": FOUR}}, "run-1", datetime(2026, 10, 1))
    assert first.loc["", "pupils_analysed"] == 80
    second, schools = published_tables(con, out, {TRIAL: {"2025-26": {**FOUR, **JOINS}}}, "run-2", datetime(2026, 11, 1))
    total, shown = second.loc["2025-26", "pupils_analysed"], schools["2025-26"]
    assert pd.isna(total) or total - 80 >= 10  # not 86 - 80 = 6
    blanked = shown["n_intervention"].isna()
    assert blanked["555605"] and blanked.sum() >= 2  # the joining school and a complement (else 86 - 80 - ...)


def test_adding_a_second_round_keeps_the_first_compared_with_what_it_published_unnamed(tmp_path):
    """As above, the officer names the round 'Year 1' and adds 'Year 2' (80 more pupils): the all-rounds
    row 166 - Year 2's 80 - the 80 published before gave the 6 as well."""
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    out = tmp_path / "out"
    published_tables(con, out, {TRIAL: {"": FOUR}}, "run-1", datetime(2026, 10, 1))
    year_two = {f"55561{i}": (10, 10, 0) for i in range(1, 5)}
    second, _ = published_tables(con, out, {TRIAL: {"Year 1": {**FOUR, **JOINS}, "Year 2": year_two}}, "run-2",
                           datetime(2026, 11, 1))
    year_one, everything = second.loc["Year 1", "pupils_analysed"], second.loc["all rounds", "pupils_analysed"]
    assert pd.isna(year_one) or year_one - 80 >= 10
    assert pd.isna(everything) or pd.isna(second.loc["Year 2", "pupils_analysed"]) or \
        everything - second.loc["Year 2", "pupils_analysed"] - 80 >= 10


def test_renaming_a_trials_only_round_keeps_it_compared_with_what_it_published_before(tmp_path):
    """'Autumn' renamed '2025 Autumn' in trials.csv while a school of 3 + 3 joins: one round gone and one
    new is the same round renamed (linking counts of other pupils would only blank more)."""
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    out = tmp_path / "out"
    published_tables(con, out, {TRIAL: {"Autumn": FOUR}}, "run-1", datetime(2026, 10, 1))
    second, _ = published_tables(con, out, {TRIAL: {"2025 Autumn": {**FOUR, **JOINS}}}, "run-2", datetime(2026, 11, 1))
    total = second.loc["2025 Autumn", "pupils_analysed"]
    assert pd.isna(total) or total - 80 >= 10
