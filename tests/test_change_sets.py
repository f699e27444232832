"""Issue 19's first two bugs rebuilt, and change sets as the officer reads them: replaced, held, per round."""

from __future__ import annotations

from datetime import date, datetime

import pytest

from microtrials.publish import history
from microtrials.ingest import registry
from microtrials.ingest import warehouse
from microtrials.ingest.trial_key import TrialKey, TrialKeys, plain_key
from microtrials.ingest.loading import load_file, load_files
from tests.conftest import EXTRACT_HEADER, pupil_rows

KEY = b"test-key-for-change-sets"
ROUND_HEADER = (*EXTRACT_HEADER, "round")
ARM = EXTRACT_HEADER.index("arm")
REGISTRY = (
    "intervention,outcome_measure,round,start_date,end_date,schools,aliases\n"
    "Café Readers,NGRT,2025 Autumn,2025-09-01,2025-12-19,222006,cafe readers|CR\n"
    "Café Readers,NGRT,2026 Spring,2026-01-05,2026-03-27,222006,cafe readers|CR\n"
    "Café Readers,NGRT,2026 Autumn,2026-09-01,2026-12-18,222005,cafe readers|CR\n"
)


def _warehouse_with(path, text: str):
    """A warehouse whose registry in use is ``text`` (stored as of 1 September 2026)."""
    connection = warehouse.connect(path)
    parsed = registry.read_registry(text.encode())
    assert not parsed.problems
    history.store_registry(connection, parsed, text, datetime(2026, 9, 1))
    return connection


@pytest.fixture
def con(tmp_path):
    connection = _warehouse_with(tmp_path / "warehouse.duckdb", REGISTRY)
    yield connection
    connection.close()


def pupils(con, urn):
    return con.execute(
        "SELECT coalesce(round, ''), count(*), count(outcome) FROM pupils WHERE school_urn = ? GROUP BY 1 ORDER BY 1",
        [urn],
    ).fetchall()


def rows_in_round(n, urn, round_name, start=1, intervention="Café Readers"):
    return [row + [round_name] for row in pupil_rows(n, urn=urn, intervention=intervention, measure="NGRT", start=start)]


def test_the_one_trial_key_reads_names_aliases_and_rounds_through_the_registry():
    keys = TrialKeys(registry.read_registry(REGISTRY.encode()).rounds, today=date(2026, 10, 1))
    autumn = TrialKey("café readers", "ngrt", "2026 autumn")
    assert keys.key("Café Readers", "NGRT", "222005") == autumn  # planned in one round: that round
    assert keys.key("cafe  READERS", " ngrt", "222005", None) == autumn  # an alias, spacing and case
    assert keys.key("CR", "NGRT", "222005", "2026 Autumn") == autumn
    assert keys.key("Café Readers", "NGRT", "222006", "2026 spring").round == "2026 spring"  # a round sent wins
    assert keys.key("Café Readers", "NGRT", "222006").round == ""  # planned in two rounds: none until sent
    assert keys.key("Café Readers", "NGRT", "999999").round == "2026 autumn"  # unplanned: the latest started
    assert keys.key("Unknown", "NGRT", "222005", "R1") == TrialKey("unknown", "ngrt", "r1")
    assert keys.label("cafe readers", "222005") == "Café Readers 2026 Autumn"
    assert plain_key("Café Readers", "NGRT", None) == TrialKey("café readers", "ngrt", "")


def test_a_corrected_file_with_an_alias_spelling_keeps_all_60_pupils(con, write_extract):
    """Issue 19, first bug: a corrected file wiped the school (0 rows) while saying 'kept'."""
    first = pupil_rows(60, urn="222005", intervention="Café Readers")
    first[0][2] = "cafe readers"  # an alias the registry lists
    first[1][ARM] = "interventon"  # a typo: the row is set aside
    report = load_file(con, write_extract("222005.csv", first), KEY)
    assert report.status == "loaded" and report.changes == ["222005 Café Readers 2026 Autumn: 59 pupils added"]
    assert pupils(con, "222005") == [("", 59, 59)]
    corrected = pupil_rows(60, urn="222005", intervention="Café Readers")
    corrected[0][2] = "cafe readers"
    report = load_file(con, write_extract("222005_corrected.csv", corrected), KEY)
    assert report.status == "loaded"
    assert report.changes == ["222005 Café Readers 2026 Autumn: 59 pupils replaced by 60 (1 added)"]
    assert pupils(con, "222005") == [("", 60, 60)]
    # the same file spelled all in the registered name, then all in an alias: still 60, never 0
    for n, spelling in enumerate(("Café Readers", "CR")):
        again = [r[:2] + [spelling] + r[3:] for r in corrected]
        report = load_file(con, write_extract(f"222005_v{n}.csv", again), KEY)
        assert report.changes == ["222005 Café Readers 2026 Autumn: 60 pupils replaced by 60 (the same pupils and scores)"]
        assert pupils(con, "222005") == [("", 60, 60)]
    recorded = con.execute("SELECT state, pupils_before, pupils_after, added, removed FROM change_sets "
                           "WHERE school_urn = '222005' ORDER BY recorded_at, file_name").fetchall()
    assert recorded == [("applied", 0, 59, 59, 0), ("applied", 59, 60, 1, 0), ("applied", 60, 60, 0, 0),
                        ("applied", 60, 60, 0, 0)]


def test_a_redelivery_with_other_scores_for_the_same_pupils_says_how_many_changed(con, write_extract):
    """Red team: new scores for the same 40 pupils read only "(the same pupils)"."""
    OUTCOME = EXTRACT_HEADER.index("outcome")
    first = pupil_rows(40, urn="222005", intervention="Café Readers")
    load_file(con, write_extract("222005.csv", first), KEY)
    rescored = [list(row) for row in first]
    for row in rescored[:12]:  # 11 scores corrected, one blanked
        row[OUTCOME] = str(int(row[OUTCOME]) + 5)
    rescored[11][OUTCOME] = ""
    report = load_file(con, write_extract("222005_v2.csv", rescored), KEY)
    line = ("222005 Café Readers 2026 Autumn: 40 pupils replaced by 40 (the same pupils; 12 outcome scores changed; "
            "outcome scores 40 -> 39)")
    assert report.changes == [line]
    assert con.execute("SELECT scores_changed, message FROM change_sets ORDER BY recorded_at DESC LIMIT 1").fetchone() == (
        12, line)
    more = rescored[:39] + pupil_rows(2, urn="222005", intervention="Café Readers", start=41)
    more[0][OUTCOME] = "70"  # was 86: with a pupil gone and two added, one score changed, one scored more
    report = load_file(con, write_extract("222005_v3.csv", more), KEY)
    assert report.changes == ["222005 Café Readers 2026 Autumn: 40 pupils replaced by 41 (2 added, 1 removed; "
                              "1 outcome score changed; outcome scores 39 -> 40)"]


def test_a_redelivery_of_the_same_pupils_with_arms_baselines_or_details_changed_says_so(con, write_extract):
    """Red team T07: every arm flipped (the randomisation rewritten) read "(the same pupils and scores)"
    and the effect size went from 0.12 to -0.56; baselines and FSM changed silently too."""
    column = {name: EXTRACT_HEADER.index(name) for name in ("arm", "baseline", "fsm", "gender")}
    first = pupil_rows(20, urn="222005", intervention="Café Readers")
    load_file(con, write_extract("222005.csv", first), KEY)
    flipped = [list(row) for row in first]
    for row in flipped:
        row[column["arm"]] = "control" if row[column["arm"]] == "intervention" else "intervention"
    for row in flipped[:3]:
        row[column["baseline"]] = str(int(row[column["baseline"]]) + 1)
    flipped[0][column["fsm"]] = "Y" if flipped[0][column["fsm"]] == "N" else "N"
    flipped[1][column["gender"]] = ""
    report = load_file(con, write_extract("222005_v2.csv", flipped), KEY)
    line = ("222005 Café Readers 2026 Autumn: 20 pupils replaced by 20 (the same pupils; 20 arms changed; "
            "3 baseline scores changed; 2 pupils' other details changed)")
    assert report.changes == [line]
    recorded = "SELECT arms_changed, baselines_changed, details_changed, state FROM change_sets ORDER BY recorded_at DESC"
    assert con.execute(recorded).fetchone() == (20, 3, 2, "applied")  # told and recorded, not held (the contract)
    assert con.execute("SELECT count(*) FROM pupils WHERE arm = 'intervention'").fetchone()[0] == sum(
        row[column["arm"]] == "intervention" for row in flipped)
    report = load_file(con, write_extract("222005_v3.csv", flipped), KEY)  # the same rows under a third name
    assert report.changes == ["222005 Café Readers 2026 Autumn: 20 pupils replaced by 20 (the same pupils and scores)"]


def test_per_round_files_keep_every_round(con, write_extract):
    """Issue 19, second bug: the spring file replaced the school's autumn rows too."""
    autumn = rows_in_round(240, "222006", "2025 Autumn")
    spring = rows_in_round(212, "222006", "2026 Spring", start=1000)
    first = load_file(con, write_extract("222006_2025-Autumn.csv", autumn, header=ROUND_HEADER), KEY)
    second = load_file(con, write_extract("222006_2026-Spring.csv", spring, header=ROUND_HEADER), KEY)
    assert first.changes == ["222006 Café Readers 2025 Autumn: 240 pupils added"]
    assert second.changes == ["222006 Café Readers 2026 Spring: 212 pupils added"]
    assert pupils(con, "222006") == [("2025 Autumn", 240, 240), ("2026 Spring", 212, 212)]  # 452 of 452
    # the analysis sees every delivered row in its round
    combos = con.execute(warehouse.sql("delivered_combos")).df()
    matched = registry.match_deliveries(registry.read_registry(REGISTRY.encode()), combos, date(2026, 4, 1)).combos
    assert sorted(zip(matched["round"], matched["rows"])) == [("2025 Autumn", 240), ("2026 Spring", 212)]
    # a corrected autumn file replaces autumn only; a spring file loaded again changes nothing
    fixed = load_file(con, write_extract("222006_2025-Autumn-v2.csv", autumn[:200], header=ROUND_HEADER), KEY)
    assert fixed.changes == ["222006 Café Readers 2025 Autumn: 240 pupils replaced by 200 (40 removed)"]
    assert pupils(con, "222006") == [("2025 Autumn", 200, 200), ("2026 Spring", 212, 212)]
    assert load_file(con, write_extract("222006_2026-Spring.csv", spring, header=ROUND_HEADER), KEY).status == "unchanged"


def test_both_rounds_in_one_batch_keep_both(con, write_extract):
    autumn = write_extract("222006_a.csv", rows_in_round(30, "222006", "2025 Autumn"), header=ROUND_HEADER)
    spring = write_extract("222006_b.csv", rows_in_round(20, "222006", "2026 spring", start=500), header=ROUND_HEADER)
    reports = load_files(con, [autumn, spring], KEY)
    assert [r.status for r in reports] == ["loaded", "loaded"]
    assert pupils(con, "222006") == [("2025 Autumn", 30, 30), ("2026 spring", 20, 20)]


def test_a_file_without_a_round_replaces_the_round_the_registry_places_the_school_in(con, write_extract):
    load_file(con, write_extract("222005.csv", pupil_rows(20, urn="222005", intervention="Café Readers")), KEY)
    sent = rows_in_round(22, "222005", "2026 Autumn")  # the same round, now said in a column
    report = load_file(con, write_extract("222005_v2.csv", sent, header=ROUND_HEADER), KEY)
    assert report.changes == ["222005 Café Readers 2026 Autumn: 20 pupils replaced by 22 (2 added)"]
    assert pupils(con, "222005") == [("2026 Autumn", 22, 22)]


def test_a_held_change_set_keeps_the_earlier_rows_exactly_and_others_apply(con, write_extract):
    both = pupil_rows(40, urn="222005", intervention="Café Readers") + pupil_rows(
        30, urn="222005", intervention="Maths", measure="PUMA", start=100)
    load_file(con, write_extract("222005.csv", both), KEY)
    before = con.execute("SELECT * FROM pupils WHERE intervention = 'Café Readers' ORDER BY pupil_key").fetchall()
    fewer = pupil_rows(10, urn="222005", intervention="Café Readers") + pupil_rows(
        31, urn="222005", intervention="Maths", measure="PUMA", start=100)
    report = load_file(con, write_extract("222005_v2.csv", fewer), KEY)
    assert report.status == "partly held" and report.rows_loaded == 31
    assert report.changes == [
        "222005 Café Readers 2026 Autumn: held, not applied: it would replace 40 pupils by 10, more than half of "
        "them gone; the earlier 40 pupils stay as they were (to apply it on purpose: microtrials accept "
        "222005_v2.csv)",
        "222005 Maths: 30 pupils replaced by 31 (1 added)",
    ]
    assert con.execute("SELECT * FROM pupils WHERE intervention = 'Café Readers' ORDER BY pupil_key").fetchall() == before
    assert con.execute("SELECT count(*) FROM pupils WHERE intervention = 'Maths'").fetchone() == (31,)
    states = con.execute("SELECT state, count(*) FROM change_sets WHERE file_name = '222005_v2.csv' GROUP BY 1 "
                         "ORDER BY 1").fetchall()
    assert states == [("applied", 1), ("held", 1)]


# ---- accept and withdraw -----------------------------------------------------------------------


def test_accept_applies_a_held_change_on_purpose_and_records_it(con, write_extract, tmp_path):
    from microtrials.ingest.loading import accept_file

    load_file(con, write_extract("222005.csv", pupil_rows(40, urn="222005", intervention="Café Readers")), KEY)
    fewer = write_extract("222005_v2.csv", pupil_rows(10, urn="222005", intervention="Café Readers"))
    assert load_file(con, fewer, KEY).status == "held"
    assert load_file(con, fewer, KEY).status == "held"  # a run never applies it
    accepted = accept_file(con, fewer, KEY)
    assert accepted.status == "loaded" and accepted.rows_loaded == 10
    assert accepted.changes == ["222005 Café Readers 2026 Autumn: 40 pupils replaced by 10 (30 removed); "
                                "accepted by the officer"]
    assert pupils(con, "222005") == [("", 10, 10)]
    assert load_file(con, fewer, KEY).status == "unchanged"  # the next run: applied, nothing to do
    assert accept_file(con, fewer, KEY).status == "unchanged"
    states = con.execute("SELECT state FROM change_sets WHERE file_name = '222005_v2.csv' ORDER BY recorded_at").fetchall()
    assert states == [("held",), ("accepted",)]


def test_a_file_of_other_pupils_is_held_though_it_keeps_the_count(con, write_extract):
    """Red team F6: a second file carrying 20 different pupils (another class sent by mistake) loses the 20
    stored ones: held, whatever it adds, until the officer accepts it. Replacing 10 of the 20 applies."""
    from microtrials.ingest.loading import accept_file

    load_file(con, write_extract("222005.csv", pupil_rows(20, urn="222005", intervention="Café Readers")), KEY)
    before = con.execute("SELECT * FROM pupils ORDER BY pupil_key").fetchall()
    other = write_extract("222005_class2.csv", pupil_rows(20, urn="222005", intervention="Café Readers", start=500))
    report = load_file(con, other, KEY)
    assert report.status == "held" and report.rows_loaded == 0
    assert report.changes == [
        "222005 Café Readers 2026 Autumn: held, not applied: it would remove 20 of the 20 pupils stored (and add "
        "20 others), more than half of them gone; the earlier 20 pupils stay as they were (to apply it on "
        "purpose: microtrials accept 222005_class2.csv)"]
    assert con.execute("SELECT * FROM pupils ORDER BY pupil_key").fetchall() == before
    assert con.execute("SELECT state, pupils_before, pupils_after, added, removed FROM change_sets "
                       "WHERE file_name = '222005_class2.csv'").fetchall() == [("held", 20, 20, 20, 20)]
    accepted = accept_file(con, other, KEY)
    assert accepted.changes == ["222005 Café Readers 2026 Autumn: 20 pupils replaced by 20 (20 added, 20 removed); "
                                "accepted by the officer"]
    assert con.execute("SELECT count(*), min(source_file) FROM pupils").fetchone() == (20, "222005_class2.csv")
    half = pupil_rows(10, urn="222005", intervention="Café Readers", start=500) + pupil_rows(
        10, urn="222005", intervention="Café Readers", start=900)  # 10 kept, 10 of the 20 replaced: exactly half
    report = load_file(con, write_extract("222005_v3.csv", half), KEY)
    assert (report.status, report.rows_loaded) == ("loaded", 20)
    assert report.changes == ["222005 Café Readers 2026 Autumn: 20 pupils replaced by 20 (10 added, 10 removed)"]
    eleven = pupil_rows(9, urn="222005", intervention="Café Readers", start=500) + pupil_rows(
        11, urn="222005", intervention="Café Readers", start=700)  # 11 of the 20 replaced: held
    report = load_file(con, write_extract("222005_v4.csv", eleven), KEY)
    assert report.status == "held" and "it would remove 11 of the 20 pupils stored (and add 11 others)" in report.reason


def test_accept_applies_only_what_was_held(con, write_extract):
    from microtrials.ingest.loading import accept_file

    both = pupil_rows(40, urn="222005", intervention="Café Readers") + pupil_rows(
        30, urn="222005", intervention="Maths", measure="PUMA", start=100)
    load_file(con, write_extract("222005.csv", both), KEY)
    part = write_extract("222005_v2.csv", pupil_rows(10, urn="222005", intervention="Café Readers")
                         + pupil_rows(30, urn="222005", intervention="Maths", measure="PUMA", start=100))
    assert load_file(con, part, KEY).status == "partly held"
    later = pupil_rows(31, urn="222005", intervention="Maths", measure="PUMA", start=100)
    load_file(con, write_extract("222005_maths.csv", later), KEY)  # a later Maths file
    accepted = accept_file(con, part, KEY)
    assert [line.split(":")[0] for line in accepted.changes] == ["222005 Café Readers 2026 Autumn"]
    assert con.execute("SELECT intervention, count(*), min(source_file) FROM pupils GROUP BY 1 ORDER BY 1").fetchall() \
        == [("Café Readers", 10, "222005_v2.csv"), ("Maths", 31, "222005_maths.csv")]  # the later file stands


def test_accept_of_a_file_with_nothing_held_changes_nothing(con, write_extract):
    from microtrials.ingest.loading import accept_file

    path = write_extract("222005.csv", pupil_rows(10, urn="222005", intervention="Café Readers"))
    report = accept_file(con, path, KEY)
    assert report.status == "not held" and "there is nothing to accept" in report.reason
    assert pupils(con, "222005") == [] and con.execute("SELECT count(*) FROM deliveries").fetchone() == (0,)


def test_withdraw_removes_a_school_or_one_round_and_records_it(con, write_extract):
    from microtrials.ingest.loading import withdraw

    load_file(con, write_extract("222006_a.csv", rows_in_round(30, "222006", "2025 Autumn"), header=ROUND_HEADER), KEY)
    bad = rows_in_round(20, "222006", "2026 Spring", start=500)
    bad[0][ARM] = "?"
    load_file(con, write_extract("222006_b.csv", bad, header=ROUND_HEADER), KEY)
    load_file(con, write_extract("222005.csv", pupil_rows(12, urn="222005", intervention="Café Readers")), KEY)
    assert withdraw(con, "222006", "Unknown trial") == []
    done = withdraw(con, "222006", "CR", "2026 spring")
    assert [c.message for c in done] == ["222006 Café Readers 2026 Spring: withdrawn, 19 pupils removed"]
    assert pupils(con, "222006") == [("2025 Autumn", 30, 30)]
    assert con.execute("SELECT count(*) FROM quarantine WHERE school_urn = '222006'").fetchone() == (0,)
    done = withdraw(con, "222006")
    assert [c.message for c in done] == ["222006 Café Readers 2025 Autumn: withdrawn, 30 pupils removed"]
    assert pupils(con, "222006") == [] and pupils(con, "222005") == [("", 12, 12)]
    recorded = con.execute("SELECT school_urn, round, state, pupils_before, pupils_after, removed FROM change_sets "
                           "WHERE state = 'withdrawn' ORDER BY recorded_at").fetchall()
    assert recorded == [("222006", "2026 Spring", "withdrawn", 19, 0, 19), ("222006", "2025 Autumn", "withdrawn", 30, 0, 30)]
    # the school's file left in the folder does not bring it back; a new file does
    assert load_file(con, write_extract("222006_a.csv", rows_in_round(30, "222006", "2025 Autumn"),
                                        header=ROUND_HEADER), KEY).status == "unchanged"
    assert pupils(con, "222006") == []


def withdrawn_on(con):
    """The day the latest withdrawal was recorded, as the officer's line and the feedback write it."""
    from microtrials.publish.views import day

    return day(con.execute("SELECT max(recorded_at) FROM change_sets WHERE state = 'withdrawn'").fetchone()[0])


def test_a_withdrawn_schools_same_file_under_a_new_name_is_held_not_loaded(con, write_extract):
    """Red team: after `microtrials withdraw`, the same bytes under another name loaded again."""
    from microtrials.ingest.loading import accept_file, withdraw

    both = pupil_rows(20, urn="222005", intervention="Café Readers") + pupil_rows(
        12, urn="222005", intervention="Maths", measure="PUMA")
    load_file(con, write_extract("222005.csv", both), KEY)
    withdraw(con, "222005", "CR")  # one trial: Maths stays
    copy = write_extract("222005_resent.csv", both)
    report = load_file(con, copy, KEY)
    line = (f"222005 Café Readers 2026 Autumn: held, not applied: the school was withdrawn from this trial on "
            f"{withdrawn_on(con)} (microtrials withdraw); it stays withdrawn (to bring the school back: microtrials "
            "accept 222005_resent.csv)")
    assert report.status == "partly held" and report.changes == [line, "222005 Maths: 12 pupils replaced by 12 "
                                                                   "(the same pupils and scores)"]
    assert report.trials_held["Café Readers / NGRT / 2026 Autumn"] == (
        f"held, not loaded: the school was withdrawn from this trial on {withdrawn_on(con)}; if the school takes "
        "part in this trial again, tell the data team, who can load the file on purpose (to bring the school back: "
        "microtrials accept 222005_resent.csv)")
    assert pupils(con, "222005") == [("", 12, 12)]
    assert load_file(con, copy, KEY).status == "partly held"  # the next run: still held, nothing read again
    assert load_file(con, write_extract("222005_again.csv", both), KEY).status == "partly held"
    assert pupils(con, "222005") == [("", 12, 12)]
    accepted = accept_file(con, copy, KEY)  # the officer's explicit choice undoes the withdrawal
    assert accepted.status == "loaded" and accepted.changes == [
        "222005 Café Readers 2026 Autumn: 20 pupils added; accepted by the officer"]
    assert pupils(con, "222005") == [("", 32, 32)]
    withdraw(con, "222005")
    fresh = write_extract("222005_new.csv", pupil_rows(21, urn="222005", intervention="Café Readers"))
    assert load_file(con, fresh, KEY).status == "held"  # new content is held too: the withdrawal stands
    assert pupils(con, "222005") == []


def test_a_withdrawn_schools_file_saved_again_with_crlf_line_ends_is_held_until_accepted(con, write_extract, tmp_path):
    """Red team (issue 21): the same file re-saved with CRLF line ends (other bytes, other sha256) under a
    new name loaded without `microtrials accept`, undoing the withdrawal. Its rows for another trial load."""
    import csv

    from microtrials.ingest import feedback
    from microtrials.ingest.change_sets import withdrawn_keys
    from microtrials.ingest.loading import accept_file, withdraw
    from tests.conftest import extract_csv

    both = pupil_rows(20, urn="222005", intervention="Café Readers") + pupil_rows(
        12, urn="222005", intervention="Maths", measure="PUMA", start=100)
    first = write_extract("222005.csv", both)
    load_file(con, first, KEY)
    withdraw(con, "222005", "Café Readers")
    crlf = write_extract("222005 (2).csv", extract_csv(both).replace("\n", "\r\n"))
    assert crlf.read_bytes() != first.read_bytes() and crlf.read_bytes().replace(b"\r\n", b"\n") == first.read_bytes()
    report = load_file(con, crlf, KEY)
    assert report.status == "partly held" and report.rows_loaded == 12
    assert report.changes[0] == (
        f"222005 Café Readers 2026 Autumn: held, not applied: the school was withdrawn from this trial on "
        f"{withdrawn_on(con)} (microtrials withdraw); it stays withdrawn (to bring the school back: microtrials "
        "accept 222005 (2).csv)")
    assert pupils(con, "222005") == [("", 12, 12)]  # Maths only: the Café Readers rows stay withdrawn
    assert withdrawn_keys(con) == {("222005", TrialKey("café readers", "ngrt", "2026 autumn"))}
    [written] = feedback.write_feedback(con, [report], {crlf.name: crlf}, tmp_path / "feedback")
    with written.open(encoding="utf-8-sig", newline="") as f:
        rows = [r for r in csv.reader(f)][1:]
    assert [(r[3], r[4]) for r in rows] == [(
        f"Café Readers / NGRT / 2026 Autumn: held, not loaded: the school was withdrawn from this trial on "
        f"{withdrawn_on(con)}", "if the school takes part in this trial again, tell the data team, who can load the "
        "file on purpose (to bring the school back: microtrials accept 222005 (2).csv)")]
    accepted = accept_file(con, crlf, KEY)
    assert accepted.changes == ["222005 Café Readers 2026 Autumn: 20 pupils added; accepted by the officer"]
    assert pupils(con, "222005") == [("", 32, 32)] and withdrawn_keys(con) == set()


def test_a_withdrawn_schools_file_with_one_score_changed_is_held_and_the_next_run_keeps_it_held(con, write_extract):
    from microtrials.ingest.loading import accept_file, withdraw

    rows = pupil_rows(20, urn="222005", intervention="Café Readers")
    load_file(con, write_extract("222005.csv", rows), KEY)
    withdraw(con, "222005")
    rows[3][EXTRACT_HEADER.index("outcome")] = "99"  # one score corrected
    changed = write_extract("222005_corrected.csv", rows)
    report = load_file(con, changed, KEY)
    assert report.status == "held" and report.rows_loaded == 0 and len(report.changes) == 1
    assert report.changes[0].startswith("222005 Café Readers 2026 Autumn: held, not applied: the school was withdrawn "
                                        f"from the network on {withdrawn_on(con)}")  # the whole school
    assert load_file(con, changed, KEY).status == "held"  # the next run
    assert pupils(con, "222005") == []
    other = load_file(con, write_extract("222006.csv", rows_in_round(8, "222006", "2025 Autumn"), header=ROUND_HEADER), KEY)
    assert other.status == "loaded"  # another school is not held
    held = con.execute("SELECT state, pupils_before, pupils_after FROM change_sets WHERE file_name = "
                       "'222005_corrected.csv'").fetchall()
    assert held == [("held", 0, 20)]
    assert accept_file(con, changed, KEY).changes == [
        "222005 Café Readers 2026 Autumn: 20 pupils added; accepted by the officer"]
    assert pupils(con, "222005") == [("", 20, 20)]


def test_a_file_held_before_the_school_was_withdrawn_is_held_again_under_a_new_name(con, write_extract):
    from microtrials.ingest.loading import withdraw

    load_file(con, write_extract("222005.csv", pupil_rows(40, urn="222005", intervention="Café Readers")), KEY)
    fewer = pupil_rows(10, urn="222005", intervention="Café Readers")
    assert load_file(con, write_extract("222005_v2.csv", fewer), KEY).status == "held"
    withdraw(con, "222005")
    report = load_file(con, write_extract("222005_v3.csv", fewer), KEY)
    assert report.status == "held" and f"withdrawn from the network on {withdrawn_on(con)}" in report.changes[0]
    assert pupils(con, "222005") == []


NETWORK = (  # red team T03: a secondary outcome, a second round, a second trial
    "intervention,outcome_measure,round,start_date,end_date,schools,secondary_outcomes\n"
    "Alpha,Score,Autumn,2025-09-01,2025-12-19,520001 520002,Reading age\n"
    "Alpha,Score,Spring,2026-01-05,2026-04-01,520001 520002,Reading age\n"
    "Beta,Score,,2025-09-01,2026-07-17,520001 520002,\n"
)


@pytest.fixture
def network(tmp_path):
    connection = _warehouse_with(tmp_path / "network.duckdb", NETWORK)
    yield connection
    connection.close()


def alpha(urn, measure="Score", round_name="Autumn", n=20, start=1):
    return [row + [round_name] for row in pupil_rows(n, urn=urn, intervention="Alpha", measure=measure, start=start)]


def beta(urn, n=20):
    return [row + [""] for row in pupil_rows(n, urn=urn, intervention="Beta", measure="Score", start=700)]


def stored(con, urn):
    return con.execute("SELECT intervention, outcome_measure, coalesce(round, ''), count(*) FROM pupils "
                       "WHERE school_urn = ? GROUP BY ALL ORDER BY ALL", [urn]).fetchall()


def test_a_whole_school_withdrawal_holds_every_later_file_of_the_school_for_any_trial_or_round(network, write_extract):
    """Red team F4 (t03): after `withdraw 520002`, its files for the same outcome, the registered secondary
    outcome of the same trial round, the trial's other round and another trial all loaded but the first."""
    from microtrials.ingest.loading import accept_file, withdraw

    con = network
    for urn in ("520001", "520002"):
        load_file(con, write_extract(f"{urn}.csv", alpha(urn), header=ROUND_HEADER), KEY)
    assert [c.message for c in withdraw(con, "520002")] == ["520002 Alpha Autumn: withdrawn, 20 pupils removed"]
    later = {"same outcome": alpha("520002", start=30), "secondary outcome": alpha("520002", "Reading age"),
             "other round": alpha("520002", round_name="Spring"), "other trial": beta("520002")}
    files = {what: write_extract(f"520002_{n}.csv", rows, header=ROUND_HEADER) for n, (what, rows) in enumerate(later.items())}
    on = withdrawn_on(con)
    for what, path in files.items():
        report = load_file(con, path, KEY)
        assert report.status == "held" and report.rows_loaded == 0, (what, report.changes)
        assert report.changes[0].endswith(
            f": held, not applied: the school was withdrawn from the network on {on} (microtrials withdraw); it stays "
            f"withdrawn (to bring the school back: microtrials accept {path.name})"), what
        [why] = report.trials_held.values()
        assert why.startswith(f"held, not loaded: the school was withdrawn from the network on {on}; if the school "
                              "takes part in the network's trials again, tell the data team"), what
    assert stored(con, "520002") == []
    assert load_file(con, write_extract("520001_b.csv", beta("520001"), header=ROUND_HEADER), KEY).status == "loaded"
    # the plan's progress: withdrawn from every round, awaited in none (any file it sends is held)
    from microtrials.stats import trial_store

    _, refresh, _ = trial_store.plan(con, registry.read_registry(NETWORK.encode()), today=date(2026, 5, 1))
    progress = refresh.progress.set_index(["intervention", "round"])
    assert list(progress["withdrawn_urns"]) == ["520002"] * 3
    assert list(progress["awaited_urns"]) == ["", "520001", ""]  # 520001 has sent Alpha Autumn and Beta
    # accepting brings the school back for that file's trial round (any outcome measure of it), not for the others
    assert accept_file(con, files["secondary outcome"], KEY).changes == [
        "520002 Alpha Autumn: 20 pupils added; accepted by the officer"]
    again = write_extract("520002_again.csv", alpha("520002", start=30), header=ROUND_HEADER)
    assert load_file(con, again, KEY).changes == ["520002 Alpha Autumn: 20 pupils added"]
    assert load_file(con, write_extract("520002_spring2.csv", alpha("520002", round_name="Spring", n=21),
                                        header=ROUND_HEADER), KEY).status == "held"
    assert stored(con, "520002") == [("Alpha", "Reading age", "Autumn", 20), ("Alpha", "Score", "Autumn", 20)]


def test_a_withdrawal_from_one_trial_holds_its_every_outcome_and_round_and_no_other_trial(network, write_extract):
    from microtrials.ingest.loading import withdraw

    con = network
    both = alpha("520002") + beta("520002")
    load_file(con, write_extract("520002.csv", both, header=ROUND_HEADER), KEY)
    assert [c.message for c in withdraw(con, "520002", "alpha")] == ["520002 Alpha Autumn: withdrawn, 20 pupils removed"]
    assert stored(con, "520002") == [("Beta", "Score", "", 20)]
    on = withdrawn_on(con)
    for n, rows in enumerate((alpha("520002", "Reading age"), alpha("520002", round_name="Spring"))):
        report = load_file(con, write_extract(f"520002_{n}.csv", rows, header=ROUND_HEADER), KEY)
        assert report.status == "held" and f"the school was withdrawn from this trial on {on}" in report.changes[0]
    report = load_file(con, write_extract("520002_beta.csv", beta("520002", 24), header=ROUND_HEADER), KEY)
    assert report.status == "loaded" and report.changes == ["520002 Beta: 20 pupils replaced by 24 (4 added)"]
    # one round of the trial: the trial's other round loads, the round's other outcome measure is held
    withdraw(con, "520002", "Beta")
    load_file(con, write_extract("520001.csv", alpha("520001"), header=ROUND_HEADER), KEY)
    load_file(con, write_extract("520001_spring.csv", alpha("520001", round_name="Spring"), header=ROUND_HEADER), KEY)
    assert len(withdraw(con, "520001", "Alpha", "Autumn")) == 1
    assert load_file(con, write_extract("520001_ra.csv", alpha("520001", "Reading age"), header=ROUND_HEADER),
                     KEY).status == "held"
    assert load_file(con, write_extract("520001_spring2.csv", alpha("520001", round_name="Spring", n=22),
                                        header=ROUND_HEADER), KEY).status == "loaded"
    scopes = con.execute("SELECT school_urn, key_intervention, key_round FROM withdrawal_scopes "
                         "ORDER BY recorded_at").fetchall()
    assert scopes == [("520002", "alpha", None), ("520002", "beta", None), ("520001", "alpha", "autumn")]


def test_the_withdraw_command_says_which_later_files_are_held(network, write_extract, tmp_path, capsys):
    from microtrials import cli

    load_file(network, write_extract("520002.csv", alpha("520002") + beta("520002"), header=ROUND_HEADER), KEY)
    load_file(network, write_extract("520001.csv", alpha("520001") + beta("520001"), header=ROUND_HEADER), KEY)
    network.close()
    db = str(tmp_path / "network.duckdb")
    assert cli.main(["withdraw", "520002", "--trial", "alpha", "--db", db]) == 0
    assert ("  any later file of the school with rows for Alpha (any outcome measure, any round), whatever its name "
            "or content, is held, not loaded (microtrials accept FILE brings the school back for the trial rounds of "
            "that file); its files may stay in the extracts folder") in capsys.readouterr().out
    assert cli.main(["withdraw", "520002", "--db", db]) == 0
    assert "  any later file of the school for any trial or round, whatever" in capsys.readouterr().out
    assert cli.main(["withdraw", "520001", "--trial", "Alpha", "--round", "autumn", "--db", db]) == 0
    assert "with rows for Alpha Autumn (any outcome measure), whatever" in capsys.readouterr().out


def test_the_accept_and_withdraw_commands(con, write_extract, tmp_path, capsys, monkeypatch):
    from microtrials import cli
    from microtrials.ingest.privacy import pupil_key

    db = tmp_path / "warehouse.duckdb"
    first = write_extract("222005.csv", pupil_rows(40, urn="222005", intervention="Café Readers"))
    fewer = write_extract("222005_v2.csv", pupil_rows(10, urn="222005", intervention="Café Readers"))
    key = pupil_key([first, fewer])  # as a run reads it: MICROTRIALS_PUPIL_KEY
    load_file(con, first, key)
    assert load_file(con, fewer, key).status == "held"
    con.close()
    monkeypatch.setenv("MICROTRIALS_FEEDBACK", str(tmp_path / "feedback"))
    assert cli.main(["accept", str(fewer), "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "accepted 222005_v2.csv:\n  222005 Café Readers 2026 Autumn: 40 pupils replaced by 10 (30 removed); accepted" in out
    assert cli.main(["accept", str(fewer), "--db", str(db)]) == 1
    assert "already applied" in capsys.readouterr().out
    assert cli.main(["withdraw", "22200", "--db", str(db)]) == 2
    assert "is not a school URN (6 digits)" in capsys.readouterr().err
    assert cli.main(["withdraw", "222005", "--trial", "cafe readers", "--db", str(db)]) == 0
    assert "222005 Café Readers 2026 Autumn: withdrawn, 10 pupils removed" in capsys.readouterr().out
    assert cli.main(["withdraw", "222005", "--db", str(db)]) == 1
    assert "holds no rows" in capsys.readouterr().out


def test_the_run_summary_and_the_published_load_report_say_held():
    import pandas as pd

    from microtrials import cli
    from microtrials.publish import site

    held = ("222005 Café Readers 2026 Autumn: held, not applied: it would replace 40 pupils by 7, more than half "
            "of them gone; the earlier 40 pupils stay as they were (to apply it on purpose: microtrials accept x.csv)")
    report = pd.DataFrame({"changes": ["222006 Maths: 30 pupils added\n222006 Café Readers 2025 Autumn: 3 pupils added",
                                       held, ""]})
    assert cli._change_lines(report) == ["changes to the warehouse:", f"  {held}", "  222006 Maths: 30 pupils added",
                                         "  222006 Café Readers 2025 Autumn: 3 pupils added"]
    assert cli._change_lines(report, shown=1)[-1] == ("  ... and 2 more changes (all in the warehouse's change_sets table; the Dagster UI shows "
                                                         "each school's as the pupils asset's 'changes')")
    assert cli._change_lines(report.iloc[2:]) == ["changes to the warehouse: none"]
    assert site._load_status({"status": "partly held", "rows_read": 3, "rows_loaded": 0}) == "held"
    published = site.without_counts(held)
    assert "held, not applied" in published and " 7" not in published and "40" not in published


def test_rows_sent_without_a_round_are_replaced_after_the_school_joins_a_second_round(con, write_extract):
    """Red team: rows loaded without a round, then a second round naming the school registered: the
    same pupils re-sent with their round replace them (were kept twice: 40 rows, 20 pupils)."""
    load_file(con, write_extract("222005.csv", pupil_rows(20, urn="222005", intervention="Café Readers")), KEY)
    later = REGISTRY + "Café Readers,NGRT,2027 Spring,2027-01-04,2027-03-26,222005,cafe readers|CR\n"
    history.store_registry(con, registry.read_registry(later.encode()), later, datetime(2026, 10, 1))
    sent = rows_in_round(20, "222005", "2026 Autumn")
    report = load_file(con, write_extract("222005_v2.csv", sent, header=ROUND_HEADER), KEY)
    assert report.changes == ["222005 Café Readers 2026 Autumn: 20 pupils replaced by 20 (the same pupils and scores)"]
    assert pupils(con, "222005") == [("2026 Autumn", 20, 20)]
    assert con.execute("SELECT count(*), count(DISTINCT pupil_key) FROM pupils").fetchone() == (20, 20)


def test_rows_sent_without_a_round_are_replaced_by_a_file_without_a_round_after_the_registry_changes(
        con, write_extract):
    load_file(con, write_extract("222005.csv", pupil_rows(20, urn="222005", intervention="Café Readers")), KEY)
    later = REGISTRY + "Café Readers,NGRT,2027 Spring,2027-01-04,2027-03-26,222005,cafe readers|CR\n"
    history.store_registry(con, registry.read_registry(later.encode()), later, datetime(2026, 10, 1))
    again = pupil_rows(22, urn="222005", intervention="Café Readers")
    report = load_file(con, write_extract("222005_v2.csv", again), KEY)
    assert report.changes == ["222005 Café Readers: 20 pupils replaced by 22 (2 added)"]
    assert pupils(con, "222005") == [("", 22, 22)]


def test_rows_set_aside_carry_the_round_their_key_resolved_to_like_the_pupil_rows(con, write_extract):
    """Red team: quarantine rows carried no round. A row set aside by a rule (an arm typo), one set
    aside as a gross error of the whole trial (99999999), and a row naming no trial."""
    OUTCOME = EXTRACT_HEADER.index("outcome")
    planned = pupil_rows(20, urn="222005", intervention="CR")  # no round: the one round the school is planned in
    planned[0][ARM] = "interventon"
    load_file(con, write_extract("222005.csv", planned), KEY)
    per_round = rows_in_round(20, "222006", "2026 spring")
    per_round[1][ARM] = "treatment"
    per_round[2][OUTCOME] = "99999999"
    per_round[3][2] = ""
    load_file(con, write_extract("222006.csv", per_round, header=ROUND_HEADER), KEY)
    got = con.execute("SELECT school_urn, line, \"round\", key_round FROM quarantine ORDER BY 1, 2").fetchall()
    assert got == [("222005", 2, None, "2026 autumn"), ("222006", 3, "2026 spring", "2026 spring"),
                   ("222006", 4, "2026 spring", "2026 spring"), ("222006", 5, "2026 spring", None)]
    stored = con.execute("SELECT DISTINCT school_urn, key_round FROM pupils ORDER BY 1").fetchall()
    assert stored == [("222005", "2026 autumn"), ("222006", "2026 spring")]


def test_pupils_stored_twice_by_the_old_round_bug_are_told_in_the_run_summary_not_repaired(con, write_extract, tmp_path):
    """A warehouse the old round bug left duplicated (rows loaded before key_round was kept, then the same
    pupils sent with their round after the school joined a second round): one notice line, rows untouched."""
    from microtrials import cli
    from microtrials.ingest.change_sets import stored_twice
    from microtrials.ingest.loading import accept_file, withdraw

    load_file(con, write_extract("222005.csv", pupil_rows(20, urn="222005", intervention="CR")), KEY)
    load_file(con, write_extract("222006.csv", rows_in_round(8, "222006", "2025 Autumn")), KEY)
    assert stored_twice(con) == ""
    con.execute("UPDATE pupils SET key_round = NULL")  # what the previous version stored
    later = REGISTRY + "Café Readers,NGRT,2027 Spring,2027-01-04,2027-03-26,222005,cafe readers|CR\n"
    history.store_registry(con, registry.read_registry(later.encode()), later, datetime(2026, 10, 1))
    assert stored_twice(con) == ""  # rows sent with a round, or a different trial, are no sign of it
    resent = write_extract("222005_v2.csv", rows_in_round(15, "222005", "2026 Autumn"), header=ROUND_HEADER)
    assert load_file(con, resent, KEY).changes == ["222005 Café Readers 2026 Autumn: 15 pupils added"]  # the bug
    notice = ("notice: the warehouse may hold pupils twice, sent without a round before rows kept their round and "
              "again with one: 222005 Café Readers 2026 Autumn (15 pupils); see 'Rows stored twice' in "
              "docs/loading.md")
    assert stored_twice(con) == notice
    assert con.execute("SELECT count(*) FROM pupils WHERE school_urn = '222005'").fetchone() == (35,)
    con.close()
    (tmp_path / "out").mkdir()
    lines, _ = cli.summary(tmp_path / "extracts", tmp_path / "out", tmp_path / "warehouse.duckdb", "run-1")
    assert notice in lines
    con = warehouse.connect(tmp_path / "warehouse.duckdb")  # the remedy docs/loading.md gives
    withdraw(con, "222005", "Café Readers")
    assert accept_file(con, resent, KEY).status == "loaded"
    assert pupils(con, "222005") == [("2026 Autumn", 15, 15)] and stored_twice(con) == ""
    con.close()


def test_a_withdrawn_school_is_withdrawn_in_the_plan_not_awaited(con, write_extract):
    """After `microtrials withdraw`, the plan's progress reads the recorded withdrawal: the school is
    not awaited, its round not interim on its account, the registered plan keeps counting it
    ("since withdrawn") and the published registry report says "withdrawn"; accepting a new file brings it back."""
    from microtrials.ingest.change_sets import withdrawn_keys
    from microtrials.ingest.loading import accept_file, withdraw
    from microtrials.publish import site, views
    from microtrials.stats import trial_store

    parsed = registry.read_registry(REGISTRY.encode())
    load_file(con, write_extract("222006.csv", rows_in_round(30, "222006", "2025 Autumn"), header=ROUND_HEADER), KEY)
    load_file(con, write_extract("222005.csv", rows_in_round(24, "222005", "2026 Autumn", start=300),
                                 header=ROUND_HEADER), KEY)
    assert withdrawn_keys(con) == set()
    withdraw(con, "222005")
    assert withdrawn_keys(con) == {("222005", TrialKey("café readers", "ngrt", "2026 autumn"))}
    _, refresh, _ = trial_store.plan(con, parsed, today=date(2027, 1, 10))
    autumn = refresh.progress.set_index("round").loc["2026 Autumn"]
    assert (autumn["awaited_urns"], autumn["withdrawn_urns"], autumn["planned"]) == ("", "222005", 1)
    assert autumn["status_note"] == "" and autumn["status"] != "interim"
    report = site.registry_report(None, refresh.progress)
    assert list(report["School URN"]) == ["222006", "222005"]  # 2026 Spring still awaits 222006
    assert "withdrawn from this round" in report["What to do"].iloc[1] and "awaited:" not in report["What to do"].iloc[1]
    counts = site.withdrawn_counts(refresh.progress)
    assert counts == {("café readers", "2026 autumn"): 1}
    shown = dict(views.plan_view(parsed.rounds[2], counts[("café readers", "2026 autumn")])["rows"])
    assert shown["Schools planned"] == "1 (1 since withdrawn)"
    new = write_extract("222005_new.csv", rows_in_round(25, "222005", "2026 Autumn", start=300), header=ROUND_HEADER)
    assert load_file(con, new, KEY).status == "held"  # a new file is held: the withdrawal stands
    assert len(withdrawn_keys(con)) == 1
    accept_file(con, new, KEY)
    assert withdrawn_keys(con) == set()


def test_a_file_whose_rows_are_gone_says_replaced_or_withdrawn_not_unchanged(con, write_extract, tmp_path):
    """New user: files replaced by a newer one, and a withdrawn school's file, showed as "unchanged since
    it was last loaded". A file none of whose trial rounds holds its rows any more says why."""
    from microtrials import cli
    from microtrials.ingest.change_sets import superseded_files, with_superseded
    from microtrials.ingest.loading import load_folder, load_report_frame, withdraw
    from microtrials.publish import site

    write_extract("222006.csv", rows_in_round(30, "222006", "2025 Autumn"), header=ROUND_HEADER)
    folder = write_extract("222005.csv", rows_in_round(24, "222005", "2026 Autumn", start=300),
                           header=ROUND_HEADER).parent
    both = rows_in_round(30, "222006", "2025 Autumn") + rows_in_round(10, "222006", "2026 Spring", start=100)
    assert superseded_files(con, ["222006.csv"]) == {}  # nothing recorded yet
    load_folder(con, folder, KEY)
    write_extract("222006_v2.csv", both, header=ROUND_HEADER)  # replaces the autumn, adds a spring
    load_folder(con, folder, KEY)
    withdraw(con, "222005")
    report = load_report_frame(load_folder(con, folder, KEY))
    assert list(report["status"]) == ["unchanged"] * 3
    assert superseded_files(con, list(report["file_name"])) == {"222005.csv": "withdrawn", "222006.csv": "replaced"}
    marked = with_superseded(con, report)
    assert [site._load_status(r) for r in marked.to_dict("records")] == ["withdrawn", "replaced", "unchanged"]
    published = site.public_load_report(marked)
    assert set(published["Status"]) == {site.LOAD_STATUS[k] for k in ("withdrawn", "replaced", "unchanged")}
    first = cli._file_lines(marked, folder, 0)[0]
    assert first.endswith(": 0 loaded, 1 unchanged since their last load, 1 replaced by a later file, 1 of a school "
                          "withdrawn (microtrials withdraw), 0 rejected")
