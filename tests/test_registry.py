"""The trial registry: reading trials.csv, validating rows, matching deliveries, plan progress, outcome switching."""

from __future__ import annotations

import hashlib
import re
from datetime import date, datetime

import pandas as pd
import pytest

from microtrials.ingest import registry as reg

HEADER = ("intervention,outcome_measure,round,start_date,end_date,schools,aliases,secondary_outcomes,"
          "registered_on,toolkit_strand,national_months,cost_per_pupil,description")
GOOD = [
    "Reciprocal reading,NGRT standardised score,2025 Autumn,2025-09-01,2025-12-19,111101 111102;111103,"
    "Reciprocal Reading Programme|RR,Reading age,2025-07-01,Reading comprehension strategies,6,£35,Pupils take turns to lead.",
    "Reciprocal reading,NGRT standardised score,2026 Spring,2026-01-05,2026-04-01,111103 111104,,,2025-12-01,"
    "Reading comprehension strategies,+6,35,Pupils take turns to lead.",
    "Maths mastery,PUMA standardised score,,2025-09-01,,111201;111202,,,,Mastery learning,5,\"£1,250\",Whole-class mastery.",
]


def csv_bytes(rows, header=HEADER, encoding="utf-8", bom=False, newline="\r\n") -> bytes:
    data = newline.join([header, *rows]) + newline
    return (b"\xef\xbb\xbf" if bom else b"") + data.encode(encoding)


def test_reads_every_column_typed():
    r = reg.read_registry(csv_bytes(GOOD, bom=True))
    assert r.problems == ()
    assert [x.round for x in r.rounds] == ["2025 Autumn", "2026 Spring", ""]
    first = r.rounds[0]
    assert first.schools == frozenset({"111101", "111102", "111103"})
    assert first.aliases == ("Reciprocal Reading Programme", "RR")
    assert first.secondary_outcomes == ("Reading age",)
    assert first.start_date == date(2025, 9, 1) and first.end_date == date(2025, 12, 19)
    assert first.registered_on == date(2025, 7, 1)
    assert first.national_months == 6 and first.cost_per_pupil == 35.0 and first.cost_rating == "£"
    assert first.toolkit_strand == "Reading comprehension strategies"
    assert first.description == "Pupils take turns to lead."
    assert first.line == 2
    assert r.rounds[2].end_date is None and r.rounds[2].cost_per_pupil == 1250.0 and r.rounds[2].cost_rating == "£££££"
    assert r.sha256 == hashlib.sha256(csv_bytes(GOOD, bom=True)).hexdigest()
    assert r.encoding == "utf-8-sig"
    assert r.interventions() == ["Reciprocal reading", "Maths mastery"]


def test_windows_1252_and_plain_utf8_read_the_same():
    rows = [GOOD[0].replace("Pupils take turns to lead.", "Pupils’ café – £35")]
    ansi = reg.read_registry(csv_bytes(rows, encoding="cp1252"))
    utf8 = reg.read_registry(csv_bytes(rows, newline="\n"))
    assert ansi.encoding == "cp1252" and utf8.encoding == "utf-8"
    assert ansi.rounds[0].description == utf8.rounds[0].description == "Pupils’ café – £35"
    assert "read as Windows-1252" in ansi.encoding_note and "first on line 2" in ansi.encoding_note
    assert utf8.encoding_note == "" and any(n.rule == "registry_encoding" for n in reg.registry_notes(ansi))


def test_each_bad_row_is_named_and_left_out_and_the_rest_works():
    bad = [
        GOOD[0],
        "Talk for writing,Writing assessment,2026,2026-13-01,,111301,,,,,,,",              # line 3 bad date
        "Talk for writing,Writing assessment,2027,2026-09-01,,11130,,,,,,,",               # line 4 5-digit URN
        "Reciprocal reading,NGRT standardised score,2025 autumn,2025-09-01,,111105,,,,,,,",  # line 5 duplicate round
        ",NGRT,2026,2026-09-01,,111106,,,,,,,",                                            # line 6 no intervention
        "Tutoring,,2026,2026-09-01,,111107,,,,,,,",                                        # line 7 no outcome
        "Tutoring,GL PTM,2026,2026-09-01,,111107,,,,,six,lots,",                           # line 8 two bad numbers
        "Tutoring,GL PTM,2027,2026-09-01,2026-08-01,111107,,,,,,,",                        # line 9 end before start
        "",                                                                                  # line 10 blank (skipped)
        GOOD[2],                                                                             # line 11 fine
    ]
    r = reg.read_registry(csv_bytes(bad))
    found = {(p.line, p.column) for p in r.problems}
    assert found == {(3, "start_date"), (4, "schools"), (5, "round"), (6, "intervention"),
                     (7, "outcome_measure"), (8, "national_months"), (8, "cost_per_pupil"), (9, "end_date")}
    assert [x.line for x in r.rounds] == [2, 11]
    by_line = {p.line: p for p in r.problems}
    assert "2026-13-01" in by_line[3].message and "YYYY-MM-DD" in by_line[3].message
    assert "6 digits" in by_line[4].message and "'11130'" in by_line[4].message
    assert "Reciprocal reading round '2025 autumn' is already on line 2" in by_line[5].message
    assert by_line[9].message.startswith("trials.csv line 9, column end_date: the round ends")
    assert all(p.action for p in r.problems)


def test_uk_dates_as_excel_saves_them_are_read():
    row = GOOD[0].replace("2025-09-01,2025-12-19", "01/09/2025,19/12/2025")
    r = reg.read_registry(csv_bytes([row]))
    assert r.problems == () and r.rounds[0].start_date == date(2025, 9, 1) and r.rounds[0].end_date == date(2025, 12, 19)


def test_missing_required_header_stops_the_registry_in_one_line_not_a_crash():
    with pytest.raises(reg.RegistryUnreadable, match="trials.csv line 1: the header row has no outcome_measure"):
        reg.read_registry(b"intervention,round\r\nA,1\r\n")


def test_alias_of_another_intervention_is_a_problem():
    rows = [GOOD[2], GOOD[0].replace("Reciprocal Reading Programme|RR", "maths  MASTERY")]
    r = reg.read_registry(csv_bytes(rows))
    assert [(p.line, p.column) for p in r.problems] == [(3, "aliases")]


@pytest.mark.parametrize("cost,rating", [(0, "£"), (79.99, "£"), (80, "££"), (200, "££"), (200.01, "£££"),
                                         (720, "£££"), (721, "££££"), (1200, "££££"), (1200.5, "£££££"), (None, None)])
def test_cost_rating_toolkit_bands(cost, rating):
    assert reg.cost_rating(cost) == rating


def test_registry_path_rule(tmp_path):
    extracts = tmp_path / "data" / "extracts"
    assert reg.registry_path(extracts, environ={}) == tmp_path / "data" / "trials.csv"
    assert reg.registry_path(extracts, environ={"MICROTRIALS_TRIALS": "/x/t.csv"}) == reg.Path("/x/t.csv")
    assert reg.registry_path(extracts, "/y/u.csv", environ={"MICROTRIALS_TRIALS": "/x/t.csv"}) == reg.Path("/y/u.csv")
    assert reg.load_registry(tmp_path / "data" / "trials.csv") is None
    warning = reg.no_registry_warning(tmp_path / "data" / "trials.csv")
    assert "every intervention name is taken as a trial" in warning and "--trials" in warning


# ---- matching -------------------------------------------------------------------------------


def _registry():
    rows = [
        "Reciprocal reading,NGRT standardised score,2025 Autumn,2025-09-01,2025-12-19,111101 111102 111103,"
        "Reciprocal Reading Programme,Reading age,,,,,",
        "Reciprocal reading,NGRT standardised score,2026 Spring,2026-01-05,2026-04-01,111103 111104 111105,,,,,,,",
        "Reciprocal reading,NGRT standardised score,2026 Autumn,2026-09-01,2026-12-18,111106,,,,,,,",
    ]
    return reg.read_registry(csv_bytes(rows))


def _combos(rows):
    return pd.DataFrame(rows, columns=["intervention", "outcome_measure", "school_urn", "round", "rows"])


def test_matching_rules():
    combos = _combos([
        ["Reciprocal reading", "NGRT standardised score", "111101", None, 40],        # planned once
        ["reciprocal  READING programme", "NGRT standardised score", "111102", None, 30],  # alias spelling
        ["Reciprocal reading", "NGRT standardised score", "111103", None, 20],        # in two rounds, no round
        ["Reciprocal reading", "NGRT standardised score", "111103", "2026 spring", 25],  # sends round
        ["Reciprocal reading", "Reading age", "111104", None, 10],                    # secondary outcome? (not in round 2)
        ["Reciprocal reading", "NGRT standardised score", "111199", None, 15],        # unplanned school
        ["Reading Boost", "NGRT standardised score", "111101", None, 12],             # unregistered
    ])
    m = reg.match_deliveries(_registry(), combos, today=date(2026, 2, 1))
    out = m.combos.set_index(["school_urn", "intervention", "outcome_measure", m.combos["round_sent"].fillna("")])
    assert tuple(out.loc[("111101", "Reciprocal reading", "NGRT standardised score", "")][["round", "outcome_role", "matched_by", "round_rule"]]) == ("2025 Autumn", "primary", "name", "plan")
    alias = out.loc[("111102", "reciprocal  READING programme", "NGRT standardised score", "")]
    assert (alias["registered_intervention"], alias["round"], alias["matched_by"]) == ("Reciprocal reading", "2025 Autumn", "alias")
    ambiguous = out.loc[("111103", "Reciprocal reading", "NGRT standardised score", "")]
    assert pd.isna(ambiguous["round"]) and ambiguous["round_rule"] == "needs round"
    sent = out.loc[("111103", "Reciprocal reading", "NGRT standardised score", "2026 spring")]
    assert (sent["round"], sent["round_rule"]) == ("2026 Spring", "sent")
    assert out.loc[("111104", "Reciprocal reading", "Reading age", "")]["outcome_role"] == "exploratory"
    unplanned = out.loc[("111199", "Reciprocal reading", "NGRT standardised score", "")]
    assert (unplanned["round"], unplanned["round_rule"]) == ("2026 Spring", "unplanned")  # latest started by 2026-02-01
    boost = out.loc[("111101", "Reading Boost", "NGRT standardised score", "")]
    assert not boost["registered"] and pd.isna(boost["round"]) and pd.isna(boost["outcome_role"])

    rules = {msg.rule: msg for msg in m.messages}
    assert set(rules) == {"unregistered", "round_needed", "unplanned_school", "exploratory"}
    assert "'Reading Boost' is not in the registry: add it, or correct the name" in rules["unregistered"].text
    assert "111103" in rules["round_needed"].text and "2025 Autumn, 2026 Spring" in rules["round_needed"].text
    assert "111199" in rules["unplanned_school"].text and "2026 Spring" in rules["unplanned_school"].text


def test_a_registered_round_sent_by_a_school_its_plan_does_not_list_is_a_warning():
    """Red team (session 6, F8): 111101, planned in 2025 Autumn only, re-sent its pupils as 2026 Spring:
    "20 pupils added" and the all-rounds row counted them twice, with nothing said."""
    combos = _combos([["Reciprocal reading", "NGRT standardised score", "111101", None, 40],
                      ["Reciprocal reading", "NGRT standardised score", "111101", "2026 Spring", 40],
                      ["Reciprocal reading", "NGRT standardised score", "111104", "2026 Spring", 30]])
    m = reg.match_deliveries(_registry(), combos, today=date(2026, 2, 1))
    assert m.combos["round"].tolist() == ["2025 Autumn", "2026 Spring", "2026 Spring"]  # loaded as sent
    assert [(msg.rule, msg.school_urn) for msg in m.messages] == [("unplanned_round", "111101")]
    assert m.messages[0].text == (
        "school 111101 sent rows for Reciprocal reading '2026 Spring', a round whose plan in trials.csv does not list "
        "it (it is planned in '2025 Autumn'): if the school takes part in that round, add it to the round's schools; "
        "if these are the same pupils as another round's, correct the round in the extract (the same pupils in two "
        "rounds count twice in all rounds)")


def test_secondary_outcome_and_unknown_round():
    combos = _combos([
        ["Reciprocal reading", "reading AGE", "111101", None, 40],
        ["Reciprocal reading", "NGRT standardised score", "111106", "2030", 40],
    ])
    m = reg.match_deliveries(_registry(), combos, today=date(2026, 2, 1))
    assert list(m.combos["outcome_role"]) == ["secondary", "primary"]
    assert m.combos["round"].tolist() == ["2025 Autumn", "2026 Autumn"]  # unknown round falls back to the plan
    assert [msg.rule for msg in m.messages] == ["round_unknown"]


def test_a_round_with_no_name_is_named_in_words_never_as_empty_quotes():
    """A workspace's trials.csv with a blank round: the warning said "joined the latest round ('')"."""
    registry = reg.read_registry(b"intervention,outcome_measure,round,start_date,schools\n"
                                 b"Reading Boost,NGRT,,2025-09-01,111101 111102\n")
    combos = _combos([["Reading Boost", "NGRT", "111199", None, 20], ["Reading Boost", "Reading age", "111101", None, 20],
                      ["Reading Boost", "NGRT", "111102", "2030", 20]])
    messages = {m.rule: m.text for m in reg.match_deliveries(registry, combos, today=date(2026, 2, 1)).messages}
    assert set(messages) == {"unplanned_school", "exploratory", "round_unknown"}
    assert "its rows joined the latest round (the round with no name in trials.csv); add the school to that round" \
        in messages["unplanned_school"]
    assert "is not a registered outcome of Reading Boost (the round with no name in trials.csv)" in messages["exploratory"]
    assert "registered rounds (the round with no name in trials.csv)" in messages["round_unknown"]
    assert not any("''" in text or "()" in text for text in messages.values())


def test_unplanned_school_before_any_round_started_joins_the_earliest():
    combos = _combos([["Reciprocal reading", "NGRT standardised score", "111199", None, 5]])
    m = reg.match_deliveries(_registry(), combos, today=date(2025, 1, 1))
    assert m.combos["round"].tolist() == ["2025 Autumn"]


def test_plan_progress_and_interim_status():
    combos = _combos([
        ["Reciprocal reading", "NGRT standardised score", "111101", None, 40],
        ["Reciprocal reading", "NGRT standardised score", "111102", None, 40],
        ["Reciprocal reading", "NGRT standardised score", "111104", None, 40],
        ["Reciprocal reading", "NGRT standardised score", "111199", None, 40],
    ])
    today = date(2026, 2, 1)
    m = reg.match_deliveries(_registry(), combos, today=today)
    progress = reg.plan_progress(_registry(), m.combos, today=today).set_index("round")
    autumn = progress.loc["2025 Autumn"]
    assert (autumn["planned"], autumn["delivered"], autumn["awaited_urns"]) == (3, 2, "111103")
    assert (autumn["status"], autumn["status_note"]) == ("interim", "awaiting 1 of 3 schools")
    spring = progress.loc["2026 Spring"]
    assert (spring["delivered"], spring["unplanned_urns"]) == (1, "111199")
    assert spring["status"] == "interim" and "until 2026-04-01" in spring["status_note"]
    assert reg.round_status(12, 9, date(2026, 1, 1), today) == ("interim", "awaiting 3 of 12 schools")
    assert reg.round_status(12, 12, date(2026, 1, 1), today) == (None, "")


def test_a_withdrawn_school_is_no_longer_awaited_nor_makes_its_round_interim():
    """`microtrials withdraw` is the officer's recorded choice: the school is withdrawn from that round,
    not awaited, and the round is not interim on its account; another round keeps awaiting it."""
    from microtrials.ingest.trial_key import plain_key

    combos = _combos([["Reciprocal reading", "NGRT standardised score", urn, None, 40] for urn in ("111101", "111102")])
    today = date(2026, 2, 1)
    m = reg.match_deliveries(_registry(), combos, today=today)
    left = {("111103", plain_key("Reciprocal reading", "NGRT standardised score", "2025 Autumn")),
            ("111101", plain_key("Reciprocal reading", "NGRT standardised score", "2025 Autumn")),  # delivered again
            ("111104", plain_key("Reciprocal reading", "Reading age", "2026 Spring"))}  # another outcome
    progress = reg.plan_progress(_registry(), m.combos, today, left).set_index("round")
    autumn = progress.loc["2025 Autumn"]
    assert (autumn["planned"], autumn["delivered"], autumn["awaited"], autumn["awaited_urns"]) == (3, 2, 0, "")
    assert (autumn["withdrawn"], autumn["withdrawn_urns"], pd.isna(autumn["status"])) == (1, "111103", True)
    spring = progress.loc["2026 Spring"]
    assert (spring["awaited_urns"], spring["withdrawn_urns"]) == ("111103 111104 111105", "")
    assert reg.round_status(12, 9, date(2026, 1, 1), today, withdrawn=1) == (
        "interim", "awaiting 2 of 11 schools; 1 more withdrawn")
    assert reg.round_status(12, 11, date(2026, 1, 1), today, withdrawn=1) == (None, "")


def test_primary_outcome_changed_after_results_is_noted():
    before = _registry()
    after_bytes = csv_bytes([
        "Reciprocal reading,Reading age,2025 Autumn,2025-09-01,2025-12-19,111101 111102 111103,,,,,,,",
        "Reciprocal reading,NGRT standardised score,2026 Spring,2026-01-05,2026-04-01,111103 111104 111105,,,,,,,",
        "Reciprocal reading,GL reading,2026 Autumn,2026-09-01,2026-12-18,111106,,,,,,,",
    ])
    after = reg.read_registry(after_bytes)
    versions = [(datetime(2026, 1, 20), after), (datetime(2025, 8, 1), before)]  # any order
    first = {("reciprocal reading", "2025 autumn"): datetime(2025, 12, 1)}  # 2026 Autumn has no results yet
    notes = reg.outcome_switch_notes(versions, first)
    assert list(notes) == [("reciprocal reading", "2025 autumn")]
    assert "from 'NGRT standardised score' to 'Reading age'" in notes[("reciprocal reading", "2025 autumn")]
    # A change before any results arrived is not outcome switching.
    assert reg.outcome_switch_notes(versions, {("reciprocal reading", "2025 autumn"): datetime(2026, 2, 1)}) == {}


# ---- the Dagster asset and its checks -------------------------------------------------------


def _materialize(tmp_path):
    import dagster as dg

    from pipelines.assets.registry import REGISTRY_CHECKS, registry
    from pipelines.resources import Settings, Warehouse

    (tmp_path / "data" / "extracts").mkdir(parents=True, exist_ok=True)
    resources = {
        "settings": Settings(extracts_dir=str(tmp_path / "data" / "extracts"), out_dir=str(tmp_path / "out")),
        "warehouse_db": Warehouse(database=str(tmp_path / "w.duckdb")),
    }
    with dg.instance_for_test() as instance:
        return dg.materialize([registry, *REGISTRY_CHECKS], resources=resources, raise_on_error=True, instance=instance)


def _checks(result):
    return {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}


def test_registry_asset_keeps_versions_and_names_bad_rows(tmp_path, monkeypatch):
    import duckdb

    monkeypatch.delenv("MICROTRIALS_TRIALS", raising=False)
    trials = tmp_path / "data" / "trials.csv"
    trials.parent.mkdir(parents=True)
    trials.write_bytes(csv_bytes(GOOD, bom=True))
    first = _materialize(tmp_path)
    metadata = first.get_asset_materialization_events()[0].materialization.metadata
    assert metadata["dagster/row_count"].value == 3 and metadata["new_version"].value is True
    assert _checks(first) == {"registry_rows_valid": True, "registry_version_kept": True}

    trials.write_bytes(csv_bytes([*GOOD, "Talk for writing,Writing,2026,2026-09-31,,111301,,,,,,,"]))
    second = _materialize(tmp_path)
    metadata = second.get_asset_materialization_events()[0].materialization.metadata
    assert metadata["versions_kept"].value == 2 and metadata["rows_left_out"].value == 1
    assert "2026-09-31" in metadata["problems"].value and re.search(r"\|\s+5 \| start_date", metadata["problems"].value)
    assert _checks(second) == {"registry_rows_valid": False, "registry_version_kept": True}
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM registry_rounds").fetchone()[0] == 3
        assert con.execute("SELECT count(*) FROM registry_versions").fetchone()[0] == 2


def test_registry_asset_without_a_file_warns_and_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("MICROTRIALS_TRIALS", raising=False)
    result = _materialize(tmp_path)
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    assert metadata["registry"].value == "none"
    assert "every intervention name is taken as a trial" in metadata["warning"].value
    assert _checks(result) == {"registry_rows_valid": True, "registry_version_kept": True}


def test_sample_registry_opens_cleanly_and_matches_the_sample_extracts():
    root = reg.Path(__file__).resolve().parents[1] / "data"
    data = (root / "trials.csv").read_bytes()
    assert data.startswith(b"\xef\xbb\xbf") and b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    sample = reg.read_registry(data)
    assert sample.problems == () and len(sample.rounds) == 5
    assert [r.round for r in sample.rounds_of("Reciprocal reading")] == ["2025 Autumn", "2026 Summer"]
    delivered = pd.concat([pd.read_csv(p, dtype=str) for p in sorted((root / "extracts").glob("*.csv"))])
    combos = delivered.groupby(["intervention", "outcome_measure", "school_urn", "round"], dropna=False
                               ).size().rename("rows").reset_index()
    combos["round"] = combos["round"].astype(object).where(combos["round"].notna(), None)
    matched = reg.match_deliveries(sample, combos, today=date(2026, 11, 23))
    # the sample's planted registry cases (data/README.md): one unregistered intervention, one
    # unplanned school, and nothing else the officer must act on
    assert sorted((m.rule, m.intervention, m.school_urn) for m in matched.messages) == [
        ("unplanned_school", "Tutoring in Year 7 maths", "111459"),
        ("unregistered", "Philosophy for Children", "111114,111397,111493")]
    registered = matched.combos[matched.combos["registered"].astype(bool)]
    assert set(registered["outcome_role"]) == {"primary"}
    assert registered.loc[registered["matched_by"] == "alias", "school_urn"].tolist() == ["111114"]
    both = registered[registered["round_rule"] == "sent"]
    assert sorted(set(both["school_urn"])) == ["111109", "111304", "111595"]
    assert sorted(set(both["round"])) == ["2025 Autumn", "2026 Summer"]
    progress = reg.plan_progress(sample, matched.combos, today=date(2026, 11, 23))
    assert progress["awaited"].sum() == 1
    assert progress.loc[progress["awaited"] == 1, "status_note"].tolist() == ["awaiting 1 of 11 schools"]


def test_matching_accepts_arrow_from_duckdb():
    import duckdb

    con = duckdb.connect()
    con.execute("CREATE TABLE pupils (school_urn VARCHAR, intervention VARCHAR, outcome_measure VARCHAR, round VARCHAR)")
    con.execute("INSERT INTO pupils VALUES ('111101', 'Reciprocal reading', 'NGRT standardised score', NULL), "
                "('111101', 'Reciprocal reading', 'NGRT standardised score', NULL), "
                "('111103', 'Reciprocal reading', 'NGRT standardised score', '2025 Autumn')")
    combos = con.sql("SELECT intervention, outcome_measure, school_urn, round, count(*) AS rows "
                         "FROM pupils GROUP BY ALL ORDER BY school_urn").to_arrow_table()
    m = reg.match_deliveries(_registry(), combos, today=date(2026, 2, 1))
    assert m.combos[["school_urn", "round", "rows"]].values.tolist() == [["111101", "2025 Autumn", 2], ["111103", "2025 Autumn", 1]]


def test_evidence_columns_and_local_and_national_text():
    r = reg.read_registry(csv_bytes(GOOD))
    cols = reg.evidence_columns(r, "reciprocal reading programme", "2026 Spring")
    assert cols == {"round": "2026 Spring", "toolkit_strand": "Reading comprehension strategies",
                    "national_months": 6, "cost_per_pupil": 35.0, "cost_rating": "£",
                    "description": "Pupils take turns to lead."}
    assert reg.evidence_columns(r, "Reciprocal reading", "all rounds")["round"] == "all rounds"
    assert reg.evidence_columns(r, "Unknown", None) == dict.fromkeys(reg.EVIDENCE_COLUMNS)
    # 0.21 -> +3 months, 0.12 -> +2, 0.30 -> +4 (EEF table in guidance.MONTHS_TABLE)
    assert reg.local_and_national(0.21, 0.12, 0.30, "Reading comprehension strategies", 6) == (
        "here: +3 months (+2 to +4); nationally (EEF Toolkit, Reading comprehension strategies): +6 months")
    assert reg.local_and_national(None, None, None, None, 5) == "nationally (EEF Toolkit): +5 months"


def test_rounds_with_different_primary_outcomes_are_noted():
    r = reg.read_registry(csv_bytes([GOOD[0], GOOD[1].replace("NGRT standardised score", "Reading age", 1)]))
    notes = reg.registry_notes(r)
    assert [n.rule for n in notes] == ["rounds_differ"] and "Reading age" in notes[0].text
    frame = reg.messages_frame(notes)
    assert frame.columns.tolist() == reg.MESSAGE_COLUMNS and frame.loc[0, "intervention"] == "Reciprocal reading"


def test_one_published_spelling_per_intervention():
    r = reg.read_registry(csv_bytes([GOOD[0], GOOD[1].replace("Reciprocal reading", "reciprocal  Reading", 1)]))
    assert [x.intervention for x in r.rounds] == ["Reciprocal reading", "Reciprocal reading"]
    combos = _combos([["Reciprocal reading", "NGRT standardised score", "111104", None, 3]])
    m = reg.match_deliveries(r, combos, today=date(2026, 2, 1))
    progress = reg.plan_progress(r, m.combos, today=date(2026, 2, 1)).set_index("round")
    assert progress.loc["2026 Spring", "delivered"] == 1


def test_line_numbers_are_spreadsheet_rows_when_a_cell_holds_a_line_break():
    rows = [GOOD[0].replace("Pupils take turns to lead.", '"Pupils take turns\r\nto lead."'),
            "Talk for writing,Writing,2026,2026-09-01,,1113O1,,,,,,,"]  # letter O in the URN
    r = reg.read_registry(csv_bytes(rows))
    assert r.rounds[0].description == "Pupils take turns to lead."
    assert [(p.line, p.column) for p in r.problems] == [(3, "schools")]


def test_first_results_per_round_from_extra_columns():
    combos = _combos([
        ["Reciprocal reading", "NGRT standardised score", "111101", None, 40],
        ["Reciprocal reading", "NGRT standardised score", "111102", None, 40],
        ["Reading Boost", "NGRT standardised score", "111101", None, 12],
    ])
    combos["first_loaded_at"] = pd.to_datetime(["2025-12-05", "2025-11-20", "2025-10-01"])
    m = reg.match_deliveries(_registry(), combos, today=date(2026, 2, 1))
    assert m.combos["first_loaded_at"].notna().all()
    assert reg.first_results(m.combos) == {("reciprocal reading", "2025 autumn"): datetime(2025, 11, 20)}


@pytest.mark.parametrize("data,said", [
    (b"PK\x03\x04rest-of-a-workbook", "an Excel workbook (.xlsx)"),
    ("intervention\toutcome_measure\r\n".encode("utf-16"), "UTF-16 text"),
    ("intervention,outcome_measure\r\n".encode("utf-32"), "trials.csv: the file is UTF-32 text, not UTF-8"),
    (b"intervention;outcome_measure;round;start_date;schools\r\nA;B;1;2026-01-01;111111\r\n", "semicolons"),
])
def test_files_that_are_not_comma_csv_say_how_to_save(data, said):
    with pytest.raises(reg.RegistryUnreadable) as raised:
        reg.read_registry(data)
    assert said in str(raised.value) and "CSV UTF-8" in str(raised.value)


def test_rare_unregistered_names_and_unknown_rounds_are_never_quoted():
    """A name, id or date typed into one or two rows' intervention cell (or any round value) must not
    reach the officer's report, which is published; a common unregistered name is still quoted."""
    combos = _combos([
        ["Jane Smith", "NGRT standardised score", "111101", None, 1],
        ["P1111010007", "NGRT standardised score", "111101", None, 2],
        ["Reading Boost", "NGRT standardised score", "111102", None, reg.QUOTE_NAME_MIN_ROWS],
        ["Reciprocal reading", "NGRT standardised score", "111106", "Bob Jones 2015-02-01", 40],
    ])
    m = reg.match_deliveries(_registry(), combos, today=date(2026, 2, 1))
    frame = reg.messages_frame(m.messages)
    text = " ".join(frame.astype(str).to_numpy().ravel())
    assert "Jane Smith" not in text and "P1111010007" not in text and "Bob Jones" not in text
    assert "'Reading Boost' is not in the registry" in text
    assert sorted(frame["rule"]) == ["round_unknown", "unregistered", "unregistered", "unregistered"]


def test_declared_score_ranges_are_read_and_checked_like_the_other_columns():
    header = "intervention,outcome_measure,start_date,schools,outcome_min,outcome_max,baseline_min,baseline_max"
    rows = [
        "Reading,NGRT,2025-09-01,111101,69,141,,",
        "Maths,PUMA,2025-09-01,111101,0,ten,,",
        "Writing,Essay,2025-09-01,111101,141,69,-5,5.5",
        "Spelling,Test,2025-09-01,111101,,,,8",
    ]
    r = reg.read_registry(csv_bytes(rows, header=header))
    assert [(x.intervention, x.outcome_min, x.outcome_max, x.baseline_min, x.baseline_max) for x in r.rounds] == [
        ("Reading", 69.0, 141.0, None, None), ("Spelling", None, None, None, 8.0)
    ]
    assert [p.message for p in r.problems] == [
        "trials.csv line 3, column outcome_max: 'ten' is not a number; write the highest valid outcome score as a "
        "number, e.g. 141, or leave it blank",
        "trials.csv line 4, column outcome_min: outcome_min (141) is above outcome_max (69); swap them: outcome_min "
        "is the lowest valid score, outcome_max the highest",
    ]
    frame = reg.rounds_frame(r)
    assert frame[["outcome_min", "outcome_max", "baseline_max"]].astype(object).where(frame.notna(), None).values.tolist() == [
        [69.0, 141.0, None], [None, None, 8.0]
    ]
