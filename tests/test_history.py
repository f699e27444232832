"""The evidence history: successive publications kept, "what changed" in words, the cumulative plot, registry versions."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from microtrials.publish import history
from microtrials.ingest import registry
from microtrials.publish.evidence_table import evidence_row
from microtrials.stats.trials import analyse_trial

EXTRACTS = Path(__file__).resolve().parent / "fixtures" / "reference" / "extracts"


@pytest.fixture(scope="module")
def reading() -> pd.DataFrame:
    """The reference extracts' Reciprocal reading pupils (24 schools), arm and fsm as 1/0."""
    frame = pd.concat([pd.read_csv(p, dtype={"school_urn": str}) for p in sorted(EXTRACTS.glob("*.csv"))])
    frame = frame[frame["intervention"] == "Reciprocal reading"].copy()
    frame["arm"] = (frame["arm"] == "intervention").astype(int)
    frame["fsm"] = frame["fsm"].map({"Y": 1, "N": 0})
    return frame


def _publication(pupils: pd.DataFrame, urns: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The evidence table (one row, as analysed by the pipeline) and school list for these schools."""
    row = evidence_row(analyse_trial(pupils[pupils["school_urn"].isin(urns)]))
    row["status"] = "published"
    schools = pd.DataFrame({"intervention": row["intervention"], "outcome_measure": row["outcome_measure"], "school_urn": urns})
    return pd.DataFrame([row]), schools


def test_two_publications_with_one_new_school(reading, tmp_path):
    urns = sorted(reading["school_urn"].unique())
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    first, first_schools = _publication(reading, urns[:6])
    second, second_schools = _publication(reading, urns[:7])  # school urns[6] joins
    # Precondition from the analysis itself (not from history): the new school moves the months.
    assert (first.loc[0, "months_progress"], second.loc[0, "months_progress"]) == (4, 3)
    id1 = history.append_history(con, first, datetime(2026, 3, 1, 9), first_schools)
    id2 = history.append_history(con, second, datetime(2026, 6, 1, 9), second_schools)
    assert id1 != id2
    stored = history.read_history(con)
    assert len(stored) == 2 and stored["publication_id"].tolist() == [id1, id2]
    assert stored["effect_size"].tolist() == [first.loc[0, "effect_size"], second.loc[0, "effect_size"]]
    assert stored.loc[1, "school_urns"] == " ".join(urns[:7])
    # Appending the same publication again does not duplicate it.
    assert history.append_history(con, second, datetime(2026, 6, 1, 9), second_schools) == id2
    assert len(history.read_history(con)) == 2

    before, after = history.publications(history.read_history(con))
    sentences = history.what_changed(before, after)
    assert len(sentences) == 1
    sentence = sentences[0]
    assert sentence.startswith("Reciprocal reading (NGRT standardised score): ")
    assert f"school {urns[6]} joined" in sentence
    assert "moved from +4 months to +3 months" in sentence
    assert f"{first.loc[0, 'effect_size']:.2f} → {second.loc[0, 'effect_size']:.2f}" in sentence


def test_strength_and_status_changes_are_said(reading):
    urns = sorted(reading["school_urn"].unique())
    seven, _ = _publication(reading, urns[:7])
    eight, _ = _publication(reading, urns[:8])
    # (the multisite headline's wider interval: 2 -> 3; the random-intercept headline gave 3 -> 4)
    assert (seven.loc[0, "evidence_strength"], eight.loc[0, "evidence_strength"]) == (2, 3)
    seven.loc[0, "status"] = "interim"
    sentence = history.what_changed(seven, eight)[0]
    assert "schools 7 → 8" in sentence  # no URNs kept: the count is said instead
    assert "evidence strength 2 → 3" in sentence and "status interim → published" in sentence


def test_first_and_gone_rows_and_no_change():
    row = {"intervention": "Talk for writing", "outcome_measure": "Writing", "round": "2026 Autumn",
           "effect_size": 0.31, "months_progress": 4, "evidence_strength": 2, "status": "interim"}
    assert history.what_changed(None, [row]) == [
        "Talk for writing (Writing, 2026 Autumn): first published, +4 months, evidence strength 2 of 5 (provisional)."]
    assert history.what_changed([row], []) == ["Talk for writing (Writing, 2026 Autumn): no longer in the evidence table."]
    assert history.what_changed([row], [dict(row)]) == []
    respelt = dict(row, intervention="talk for  WRITING")
    assert history.what_changed([row], [respelt]) == []  # rows match by match_key


def test_an_interim_result_s_strength_is_said_as_its_page_shows_it():
    """The run log's "since the last publication" said an interim result's strength uncapped (4 of 5)
    while its page capped it at 2: both now use views.shown_strength."""
    from microtrials.publish import views

    row = {"intervention": "Talk for writing", "outcome_measure": "Writing", "round": "2026 Autumn",
           "effect_size": 0.31, "months_progress": 4, "evidence_strength": 4, "status": "interim", "schools": 8}
    page = views.trial_view(pd.Series(row), "talk")
    assert (page.strength, page.strength_text, page.provisional) == (2, "2 of 5", True)
    assert history.what_changed(None, [row]) == [
        "Talk for writing (Writing, 2026 Autumn): first published, +4 months, evidence strength 2 of 5 (provisional)."]
    # more schools, still interim and still capped: no strength change is said; complete: 2 -> 4
    assert history.what_changed([row], [dict(row, evidence_strength=5, schools=9)]) == [
        "Talk for writing (Writing, 2026 Autumn): schools 8 → 9."]
    final = history.what_changed([row], [dict(row, status="published")])[0]
    assert "evidence strength 2 → 4" in final and "status interim → published" in final
    points = views.history_view(pd.DataFrame([dict(row, published_at="2026-12-01 09:00")]), [], "").points
    assert points[0].strength == "2 of 5"


def test_a_corrected_file_that_moves_the_interval_is_a_change_said_as_the_history_says_it():
    """New user: "What changed ... Nothing: the figures are as they were" while the history table gained
    a row "a school's corrected file" (CI 0.05-0.55 -> 0.03-0.56). Same schools and months: the page
    now says the history's reason and the interval's move."""
    from microtrials.publish import views

    before = {"intervention": "Paired reading", "outcome_measure": "NGRT", "round": "2026 Spring", "effect_size": 0.30,
              "ci_low": 0.05, "ci_high": 0.55, "months_progress": 4, "evidence_strength": 3, "status": "published",
              "schools": 4, "school_urns": "123451 123452 123453 123454", "pupils_analysed": 148,
              "published_at": "2026-12-01 09:00", "publication_id": "a"}
    after = dict(before, effect_size=0.295, ci_low=0.03, ci_high=0.56, pupils_analysed=149,
                 published_at="2026-12-02 09:00", publication_id="b")
    changes = history.trial_history(pd.DataFrame([before, after]), "Paired reading", "NGRT", "2026 Spring").changes
    assert changes == ["Paired reading (NGRT, 2026 Spring): a school's corrected file: "
                       "95% confidence interval 0.05 to 0.55 \u2192 0.03 to 0.56."]
    points = views.history_view(history.evidence_points(pd.DataFrame([before, after]), "Paired reading", "NGRT",
                                                        "2026 Spring"), [], "").points
    assert [p.reason for p in points][-1] == "a school's corrected file"
    same_interval = dict(after, ci_low=0.05, ci_high=0.55)
    assert history.what_changed([before], [same_interval]) == ["Paired reading (NGRT, 2026 Spring): a school's "
                                                               "corrected file."]


def test_cumulative_plot_is_png_and_escapes_dollars():
    frame = pd.DataFrame({
        "publication_id": ["a", "b", "c"],
        "published_at": pd.to_datetime(["2026-03-01", "2026-06-01", "2026-09-01"]),
        "intervention": ["Save $5 reading"] * 3, "outcome_measure": ["NGRT"] * 3, "round": ["all rounds"] * 3,
        "effect_size": [0.38, 0.28, None], "ci_low": [0.1, 0.12, None], "ci_high": [0.66, 0.44, None],
        "schools": [5, 6, 7],
    })
    png = history.cumulative_plot_png(frame, "save $5 READING", "NGRT")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    empty = history.cumulative_plot_png(frame, "Other", "NGRT")
    assert empty[:4] == b"\x89PNG"


def test_registry_versions_are_kept_once_each(tmp_path):
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    v1 = ("intervention,outcome_measure,round,start_date,schools\r\n"
          "Reading,NGRT,2026,2026-01-05,111101 111102\r\n")
    v2 = v1.replace("NGRT,", "Reading age,") + "Reading,NGRT,2027,2027-01-05,11110x\r\n"
    r1, r2 = registry.read_registry(v1.encode()), registry.read_registry(v2.encode())
    assert history.store_registry(con, r1, v1, datetime(2026, 1, 1)) is True
    assert history.store_registry(con, r1, v1, datetime(2026, 1, 2)) is False  # unchanged: nothing added
    assert history.store_registry(con, r2, v2, datetime(2026, 2, 1)) is True
    versions = history.registry_versions(con)
    assert [v.sha256 for _, v in versions] == [r1.sha256, r2.sha256]
    assert [t for t, _ in versions] == [datetime(2026, 1, 1), datetime(2026, 2, 1)]
    current = con.execute("SELECT intervention, outcome_measure, schools FROM registry_rounds").fetchall()
    assert current == [("Reading", "Reading age", "111101 111102")]
    problems = con.execute("SELECT line, column_name FROM registry_problems").fetchall()
    assert problems == [(3, "schools")]
    notes = registry.outcome_switch_notes(versions, {("reading", "2026"): datetime(2026, 1, 20)})
    assert "from 'NGRT' to 'Reading age'" in notes[("reading", "2026")]


def test_cumulative_alt_text():
    frame = pd.DataFrame({
        "publication_id": ["a", "b"], "published_at": pd.to_datetime(["2026-03-01", "2026-06-01"]),
        "intervention": ["Reading"] * 2, "outcome_measure": ["NGRT"] * 2, "round": ["all rounds"] * 2,
        "effect_size": [0.38, 0.28], "ci_low": [0.1, 0.12], "ci_high": [0.66, 0.44],
    })
    assert history.describe_cumulative(frame, "Reading", "NGRT") == (
        "Estimate for Reading (NGRT) over 2 publications: 0.38 (95% CI 0.10 to 0.66) on 01 Mar 2026, "
        "then 0.28 (95% CI 0.12 to 0.44) on 01 Jun 2026.")
    assert history.describe_cumulative(frame, "Other", "NGRT").startswith("No published estimate yet")


def test_a_withdrawn_school_is_said_withdrawn_not_no_longer_counted(reading, tmp_path):
    """Issue 19: a school that left (microtrials withdraw) is "withdrawn"; one whose rows went otherwise
    is "no longer counted"."""
    from microtrials.ingest import warehouse
    from microtrials.ingest.loading import record_change_sets
    from microtrials.ingest.change_sets import WITHDRAWN, ChangeSet
    from microtrials.ingest.trial_key import plain_key

    urns = sorted(reading["school_urn"].unique())
    con = warehouse.connect(tmp_path / "w.duckdb")
    first, first_schools = _publication(reading, urns[:8])
    second, second_schools = _publication(reading, urns[:6])  # urns[6] withdrew, urns[7] just went
    history.append_history(con, first, datetime(2026, 3, 1, 9), first_schools, history.withdrawn_schools(con))
    assert history.withdrawn_schools(con) == set()
    record_change_sets(con, [ChangeSet(urns[6], plain_key("Reciprocal reading", "NGRT standardised score"),
                                       "Reciprocal reading", "NGRT standardised score", "", pupils_before=30,
                                       removed=30, state=WITHDRAWN)])
    withdrawn = history.withdrawn_schools(con)
    assert withdrawn == {(urns[6], "reciprocal reading")}
    assert not history.same_as_latest(history.read_history(con), second, second_schools, withdrawn)
    history.append_history(con, second, datetime(2026, 6, 1, 9), second_schools, withdrawn)
    before, after = history.publications(history.read_history(con))
    sentence = history.what_changed(before, after)[0]
    assert f"school {urns[6]} withdrawn" in sentence
    assert f"school {urns[7]} no longer counted" in sentence
    con.close()


def test_disclosure_states_are_kept_confirmed_and_read_back():
    """A staged publication's state is read by the next audit at once (it may have been swapped in
    before a crash) but its shown counts only once confirmed; identical states are read once."""
    from datetime import datetime as _dt

    con = duckdb.connect()
    first = {"cells": [[["t", "a"], 12.0, True]], "relations": []}
    second = {"cells": [[["t", "a"], 15.0, False]], "relations": []}
    history.keep_disclosure_state(con, "run-1", _dt(2026, 10, 1), first, {("t", "a"): 12.0})
    earlier = history.earlier_disclosure(con)
    assert earlier.states == [first] and earlier.shown == {}
    history.confirm_disclosure_state(con, "run-1")
    assert history.earlier_disclosure(con).shown == {("t", "a"): 12.0}
    history.keep_disclosure_state(con, "run-2", _dt(2026, 11, 1), second, {("t", "a"): 12.0})  # checks failed
    earlier = history.earlier_disclosure(con)
    assert earlier.states == [first, second] and earlier.shown == {("t", "a"): 12.0}
    history.keep_disclosure_state(con, "run-3", _dt(2026, 12, 1), first, {("t", "a"): 12.0})
    history.confirm_disclosure_state(con, "run-3")
    earlier = history.earlier_disclosure(con)
    assert earlier.states == [first]  # run-2 was never swapped in, and run-1's state is run-3's
    history.keep_disclosure_state(con, "run-3", _dt(2026, 12, 1), second, {})  # staged again: replaced
    assert con.execute("SELECT count(*) FROM disclosure_states WHERE run_id = 'run-3'").fetchone()[0] == 1
