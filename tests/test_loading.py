"""Loading extracts into the warehouse: quarantine, rejection, re-delivery, privacy, concurrency."""

from __future__ import annotations

import hashlib
import hmac
import multiprocessing
import time

import duckdb
import pandas as pd
import pytest

from microtrials.ingest import loading
from microtrials.ingest import warehouse
from microtrials.errors import MicrotrialsError
from microtrials.ingest.loading import load_file, load_folder, load_report_frame
from tests.conftest import EXTRACT_HEADER, extract_csv, pupil_rows
from tests.helpers.examples import examples

KEY = b"test-key"
COLUMN = {name: i for i, name in enumerate(EXTRACT_HEADER)}


@pytest.fixture
def con(tmp_path):
    connection = warehouse.connect(tmp_path / "warehouse.duckdb")
    yield connection
    connection.close()


def table(con, name: str, order: str = "1") -> pd.DataFrame:
    """A whole table, without load timestamps, in a stable order."""
    frame = con.execute(f"SELECT * FROM {name} ORDER BY {order}").df()  # names are test constants
    return frame.drop(columns=[c for c in ("loaded_at", "quarantined_at") if c in frame]).reset_index(drop=True)


def snapshot(con) -> dict[str, pd.DataFrame]:
    return {
        "pupils": table(con, "pupils", "school_urn, intervention, outcome_measure, pupil_key"),
        "quarantine": table(con, "quarantine", "source_file, line, column_name"),
    }


def key_of(pupil_id: str) -> str:
    return hmac.new(KEY, pupil_id.encode(), hashlib.sha256).hexdigest()


def test_a_good_folder_loads_every_row(con, write_extract):
    write_extract("111601.csv", pupil_rows(5))
    folder = write_extract("111602.csv", pupil_rows(3, urn="111602")).parent
    reports = load_folder(con, folder, KEY)
    assert [(r.file_name, r.status, r.school_urn, r.rows_read, r.rows_loaded) for r in reports] == [
        ("111601.csv", "loaded", "111601", 5, 5),
        ("111602.csv", "loaded", "111602", 3, 3),
    ]
    pupils = table(con, "pupils", "school_urn, source_line")
    assert len(pupils) == 8
    assert pupils["pupil_key"].iloc[0] == key_of("P111601-1")
    assert pupils[["source_file", "source_line"]].iloc[0].tolist() == ["111601.csv", 2]
    deliveries = table(con, "deliveries", "file_name")
    assert deliveries[["file_name", "school_urn", "trials", "rows_loaded", "status"]].values.tolist() == [
        ["111601.csv", "111601", "Reading / NGRT", 5, "loaded"],
        ["111602.csv", "111602", "Reading / NGRT", 3, "loaded"],
    ]
    assert deliveries["delivery_id"].iloc[0] == hashlib.sha256((folder / "111601.csv").read_bytes()).hexdigest()


def test_bad_rows_are_quarantined_and_the_rest_loads(con, write_extract):
    rows = pupil_rows(4)
    rows[1][COLUMN["arm"]] = "treat"
    rows[2][COLUMN["outcome"]] = "n/a"  # no post-test: the pupil loads, with a warning (`absent` needs no fix: no warning)
    report = load_file(con, write_extract("111601.csv", rows), KEY)
    assert (report.status, report.rows_read, report.rows_loaded, report.rows_quarantined) == ("loaded", 4, 3, 1)
    assert report.quarantined_by_reason == {"arm not 'intervention' or 'control'": 1}
    assert (report.rows_with_warnings, report.warned_by_reason) == (1, {"outcome not a number": 1})
    quarantine = table(con, "quarantine", "line")
    assert quarantine[["source_file", "line", "school_urn", "column_name", "reason"]].values.tolist() == [
        ["111601.csv", 3, "111601", "arm", "arm must be 'intervention' or 'control', got 'treat'; "
         "correct the pupil's randomised arm"],
    ]
    warnings = table(con, "load_warnings", "line")
    assert warnings[["source_file", "line", "school_urn", "column_name", "rule", "intervention"]].values.tolist() == [
        ["111601.csv", 4, "111601", "outcome", "outcome not a number", "Reading"],
    ]
    assert warnings["reason"].iloc[0].startswith("outcome is not a number, got 'n/a'; kept as no post-test")
    pupils = table(con, "pupils", "source_line")
    assert pupils["source_line"].tolist() == [2, 4, 5] and pupils["outcome"].isna().tolist() == [False, True, False]


def test_a_rejected_file_changes_nothing_already_loaded(con, write_extract):
    folder = write_extract("111601.csv", pupil_rows(3)).parent
    load_folder(con, folder, KEY)
    before = snapshot(con)
    bad = write_extract("111601_new.csv", extract_csv(pupil_rows(3)).replace(",", ";"))
    report = load_file(con, bad, KEY)
    assert report.status == "rejected" and report.reason.startswith("111601_new.csv: the file is separated by semicolons")
    after = snapshot(con)
    for name in before:
        pd.testing.assert_frame_equal(before[name], after[name])
    rejected = table(con, "deliveries", "file_name").iloc[-1]
    assert (rejected["file_name"], rejected["status"], rejected["reason"]) == ("111601_new.csv", "rejected", report.reason)
    load_file(con, bad, KEY)  # seen again: no second deliveries row
    assert len(table(con, "deliveries")) == 2


def test_loading_the_same_file_twice_changes_nothing(con, write_extract):
    rows = pupil_rows(3)
    rows[0][COLUMN["arm"]] = "x"
    folder = write_extract("111601.csv", rows).parent
    load_folder(con, folder, KEY)
    before = snapshot(con) | {"deliveries": table(con, "deliveries")}
    again = load_folder(con, folder, KEY)
    assert [(r.status, r.rows_loaded, r.rows_quarantined) for r in again] == [("unchanged", 2, 1)]
    after = snapshot(con) | {"deliveries": table(con, "deliveries")}
    for name in before:
        pd.testing.assert_frame_equal(before[name], after[name])


def test_a_redelivery_replaces_only_that_schools_trials_in_the_file(con, write_extract, tmp_path):
    first = pupil_rows(4, intervention="Reading") + pupil_rows(3, intervention="Maths", measure="PUMA")
    first[0][COLUMN["arm"]] = "wrong"  # a Reading row quarantined in the first delivery
    first[5][COLUMN["arm"]] = "?"  # a Maths row quarantined
    load_file(con, write_extract("111601.csv", first), KEY)
    load_file(con, write_extract("111602.csv", pupil_rows(2, urn="111602")), KEY)
    other_school = table(con, "pupils", "pupil_key").query("school_urn == '111602'").reset_index(drop=True)
    maths = table(con, "pupils", "pupil_key").query("intervention == 'Maths'").reset_index(drop=True)

    corrected = pupil_rows(5, intervention="Reading", start=1)
    corrected[4][COLUMN["arm"]] = "99"
    report = load_file(con, write_extract("111601_v2.csv", corrected, folder="later"), KEY)
    assert (report.status, report.trials, report.rows_loaded) == ("loaded", [("Reading", "NGRT")], 4)

    pupils = table(con, "pupils", "pupil_key")
    reading = pupils.query("school_urn == '111601' and intervention == 'Reading'")
    assert sorted(reading["source_line"]) == [2, 3, 4, 5] and set(reading["source_file"]) == {"111601_v2.csv"}
    assert sorted(reading["pupil_key"]) == sorted(key_of(f"P111601-{i}") for i in range(1, 5))
    pd.testing.assert_frame_equal(pupils.query("school_urn == '111602'").reset_index(drop=True), other_school)
    pd.testing.assert_frame_equal(pupils.query("intervention == 'Maths'").reset_index(drop=True), maths)
    quarantine = table(con, "quarantine", "source_file, line")
    assert quarantine[["source_file", "line", "intervention", "column_name"]].values.tolist() == [
        ["111601.csv", 7, "Maths", "arm"],  # the school's other trial keeps its quarantine row
        ["111601_v2.csv", 6, "Reading", "arm"],
    ]


def test_a_redelivery_with_the_same_name_and_new_content_replaces(con, write_extract):
    rows = pupil_rows(3)
    rows[2][COLUMN["arm"]] = "?"
    path = write_extract("111601.csv", rows)
    load_file(con, path, KEY)
    assert table(con, "quarantine")["line"].tolist() == [4]
    write_extract("111601.csv", pupil_rows(2, start=2))  # pupil 1 of the 2 stored left out, pupil 3 now valid
    report = load_file(con, path, KEY)
    assert report.status == "loaded"
    assert sorted(table(con, "pupils")["pupil_key"]) == sorted(key_of(f"P111601-{i}") for i in (2, 3))
    assert table(con, "quarantine").empty  # the corrected file's quarantine replaces the old one
    assert table(con, "deliveries")["status"].tolist() == ["loaded", "loaded"]


def test_a_file_without_a_valid_urn_quarantines_every_row_and_a_fix_replaces_them(con, write_extract):
    load_file(con, write_extract("111602.csv", pupil_rows(2, urn="111602")), KEY)
    path = write_extract("school.csv", pupil_rows(2, urn="11601"))
    report = load_file(con, path, KEY)
    assert (report.status, report.school_urn, report.rows_loaded, report.rows_quarantined) == ("rejected", None, 0, 2)
    assert table(con, "quarantine")[["line", "school_urn", "column_name"]].values.tolist() == [
        [2, None, "school_urn"], [3, None, "school_urn"],
    ]
    write_extract("school.csv", pupil_rows(2, urn="111601"))
    assert load_file(con, path, KEY).rows_loaded == 2
    assert table(con, "quarantine").empty
    assert table(con, "pupils")["school_urn"].value_counts().to_dict() == {"111601": 2, "111602": 2}


def test_columns_outside_the_contract_and_raw_pupil_ids_are_never_stored(con, write_extract):
    header = EXTRACT_HEADER + ("pupil_name", "date_of_birth")
    rows = [r + ["Alice Zebedee", "2015-03-04"] for r in pupil_rows(3)]
    rows[0][COLUMN["arm"]] = "bad"
    report = load_file(con, write_extract("111601.csv", rows, header=header), KEY)
    assert report.columns_dropped == ["pupil_name", "date_of_birth"]
    frame = load_report_frame([report])
    assert frame["columns_dropped"].tolist() == ["pupil_name, date_of_birth"]
    everything = " ".join(
        table(con, name).astype(str).to_csv() for name in ("pupils", "quarantine", "deliveries")
    )
    assert "Alice" not in everything and "2015-03-04" not in everything
    assert "P111601-" not in everything and "P111601-" not in frame.to_csv()


def test_text_is_data_never_code(con, write_extract):
    evil = "'); DROP TABLE pupils; --"
    rows = pupil_rows(2, intervention=evil, measure='" OR 1=1 --')
    load_file(con, write_extract("o'brien; DROP TABLE deliveries.csv", rows), KEY)
    pupils = table(con, "pupils")
    assert set(pupils["intervention"]) == {evil} and set(pupils["outcome_measure"]) == {'" OR 1=1 --'}
    assert table(con, "deliveries")["file_name"].tolist() == ["o'brien; DROP TABLE deliveries.csv"]
    # ... and a re-delivery of that trial replaces it (the name is matched as a value)
    load_file(con, write_extract("again.csv", pupil_rows(1, intervention=evil, measure='" OR 1=1 --')), KEY)
    assert len(table(con, "pupils")) == 1


def test_a_failure_inside_the_write_rolls_everything_back(con, write_extract, monkeypatch):
    load_file(con, write_extract("111601.csv", pupil_rows(3)), KEY)
    before = snapshot(con) | {"deliveries": table(con, "deliveries")}
    real_sql = warehouse.sql

    def broken(name):
        return "SELECT no_such_column FROM deliveries" if name == "load_delivery" else real_sql(name)

    monkeypatch.setattr(warehouse, "sql", broken)
    with pytest.raises(duckdb.BinderException, match="no_such_column"):
        load_file(con, write_extract("111601_v2.csv", pupil_rows(2, start=20)), KEY)
    monkeypatch.setattr(warehouse, "sql", real_sql)
    after = snapshot(con) | {"deliveries": table(con, "deliveries")}
    for name in before:
        pd.testing.assert_frame_equal(before[name], after[name])


def test_spreadsheets_in_the_folder_are_reported(con, write_extract):
    write_extract("111601.csv", pupil_rows(1))
    folder = write_extract("111602.xlsx", b"PK\x03\x04").parent
    (folder / "notes.md").write_text("not an extract")
    reports = load_folder(con, folder, KEY)
    assert [(r.file_name, r.status) for r in reports] == [
        ("111601.csv", "loaded"), ("111602.xlsx", "rejected"), ("notes.md", "ignored"),
    ]
    assert reports[1].reason == (
        "111602.xlsx: could not be read as an Excel workbook (.xlsx): it may be damaged, password-protected or "
        "another kind of zip file; open it in Excel and save it again, or use File > Save As > "
        "'CSV UTF-8 (Comma delimited) (*.csv)' and send the file again"
    )


def test_load_report_frame_has_one_row_per_file(con, write_extract):
    rows = pupil_rows(3)
    rows[0][COLUMN["arm"]] = "?"
    rows[1][COLUMN["gender"]] = "X"
    write_extract("111601.csv", rows)
    folder = write_extract("bad.csv", b"").parent
    frame = load_report_frame(load_folder(con, folder, KEY))
    assert frame.to_dict("records") == [
        {
            "file_name": "111601.csv", "status": "loaded", "school_urn": "111601", "trials": "Reading / NGRT",
            "rows_read": 3, "rows_loaded": 2, "rows_quarantined": 1,
            "quarantined_by_reason": "arm not 'intervention' or 'control': 1",
            "rows_with_warnings": 1, "warnings": "gender not understood: 1", "columns_dropped": "", "reason": "",
            "changes": "111601 Reading: 2 pupils added", "outcomes_set_aside": 0, "file_warnings": "",
        },
        {
            "file_name": "bad.csv", "status": "rejected", "school_urn": "", "trials": "",
            "rows_read": 0, "rows_loaded": 0, "rows_quarantined": 0, "quarantined_by_reason": "",
            "rows_with_warnings": 0, "warnings": "", "columns_dropped": "",
            "reason": "bad.csv: the file is empty; in Excel use File > Save As > "
            "'CSV UTF-8 (Comma delimited) (*.csv)' and send the file again",
            "changes": "", "outcomes_set_aside": 0, "file_warnings": "",
        },
    ]
    warehouse.save_frame(con, "load_report", frame)  # the pipeline stores it as it is


def test_a_missing_folder_is_a_clear_error(con, tmp_path):
    with pytest.raises(MicrotrialsError, match="extracts folder .* does not exist"):
        load_folder(con, tmp_path / "nowhere", KEY)


# ---- batches: load_folder shares transactions and worker processes between files ------------


def _mixed_folder(write_extract):
    """Files that exercise every path: two of one school (the later replaces a trial), quarantine,
    no valid URN, rejected, a spreadsheet."""
    first = pupil_rows(4, intervention="Reading") + pupil_rows(3, intervention="Maths", measure="PUMA")
    first[0][COLUMN["arm"]] = "wrong"
    write_extract("111601_a.csv", first)
    later = pupil_rows(3, intervention="Reading", start=1)  # pupil 4 of the 3 stored left out, pupil 1 now valid
    later[1][COLUMN["fsm"]] = "?"
    write_extract("111601_b.csv", later)
    write_extract("111602.csv", pupil_rows(5, urn="111602"))
    write_extract("111603.csv", pupil_rows(2, urn="111603"))
    write_extract("school.csv", pupil_rows(2, urn="11604"))
    write_extract("bad.csv", b"")
    return write_extract("111605.xlsx", b"PK\x03\x04").parent


def _everything(con) -> dict[str, pd.DataFrame]:
    return snapshot(con) | {"deliveries": table(con, "deliveries", "file_name, status")}


def test_a_batched_load_is_the_same_as_loading_file_by_file(tmp_path, write_extract, monkeypatch):
    folder = _mixed_folder(write_extract)
    one_by_one = warehouse.connect(tmp_path / "one_by_one.duckdb")
    expected = [load_file(one_by_one, path, KEY) for path in sorted(folder.iterdir(), key=lambda p: p.name)]
    monkeypatch.setattr(loading, "BATCH_FILES", 3)  # several chunks, staged ahead of their writes
    monkeypatch.setattr(loading, "PARALLEL_MIN_FILES", 1)  # prepared by worker processes
    batched = warehouse.connect(tmp_path / "batched.duckdb")
    reports = load_folder(batched, folder, KEY)
    assert reports == expected
    want, got = _everything(one_by_one), _everything(batched)
    for name in want:
        pd.testing.assert_frame_equal(want[name], got[name])
    again = load_folder(batched, folder, KEY)
    assert [(r.file_name, r.status) for r in again] == [
        (r.file_name, "rejected" if r.status == "rejected" else "unchanged") for r in expected
    ]
    after = _everything(batched)
    for name in got:
        pd.testing.assert_frame_equal(got[name], after[name])
    one_by_one.close()
    batched.close()


def test_a_failing_file_in_a_shared_transaction_loses_no_other_file(con, write_extract, monkeypatch):
    for urn in ("111601", "111602", "111603"):
        folder = write_extract(f"{urn}.csv", pupil_rows(2, urn=urn)).parent
    real_write = loading._write

    def failing(cur, group, how):
        if any(d.report.file_name == "111602.csv" for d in group):
            raise duckdb.ConstraintException("simulated failure")
        return real_write(cur, group, how)

    monkeypatch.setattr(loading, "_write", failing)
    with pytest.raises(duckdb.ConstraintException, match="simulated"):
        load_folder(con, folder, KEY)
    # the shared transaction was rolled back, then the file before the failing one went alone
    assert table(con, "deliveries")["file_name"].tolist() == ["111601.csv"]
    assert set(table(con, "pupils")["source_file"]) == {"111601.csv"}
    monkeypatch.setattr(loading, "_write", real_write)
    assert [r.status for r in load_folder(con, folder, KEY)] == ["unchanged", "loaded", "loaded"]
    assert table(con, "pupils")["school_urn"].value_counts().to_dict() == {"111601": 2, "111602": 2, "111603": 2}


# ---- concurrency: DuckDB allows one writing process per file ------------------------------


def _load_in_process(db_path, folder, barrier, results):
    barrier.wait(60)  # both processes ask for the warehouse at the same moment
    asked = time.monotonic()
    con = warehouse.connect_with_retry(db_path, timeout_s=60.0)
    waited = time.monotonic() - asked
    try:
        reports = load_folder(con, folder, KEY)
        time.sleep(0.5)  # hold the lock a while, so the other process must wait for it
        results.put(([(r.file_name, r.status, r.rows_loaded) for r in reports], waited))
    finally:
        con.close()


def _hold_lock(db_path, locked, release):
    con = warehouse.connect(db_path)
    locked.set()
    release.wait(30)
    con.close()


@pytest.mark.slow
def test_two_processes_loading_at_once_both_finish(tmp_path, write_extract):
    for i in range(3):
        write_extract(f"1116{i:02d}.csv", pupil_rows(50, urn=f"1116{i:02d}"), folder="a")
        write_extract(f"1117{i:02d}.csv", pupil_rows(40, urn=f"1117{i:02d}"), folder="b")
    db = tmp_path / "shared.duckdb"
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_load_in_process, args=(db, tmp_path / f, barrier, results)) for f in "ab"]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sorted(sum(n for *_, n in reports) for reports, _ in outcomes) == [120, 150]
    assert max(waited for _, waited in outcomes) > 0.3  # one of them did wait for the lock
    con = warehouse.connect(db, read_only=True)
    counts = con.execute("SELECT school_urn, count(*) FROM pupils GROUP BY 1 ORDER BY 1").fetchall()
    con.close()
    assert counts == [(f"1116{i:02d}", 50) for i in range(3)] + [(f"1117{i:02d}", 40) for i in range(3)]


@pytest.mark.slow
def test_a_held_lock_becomes_a_clear_error_after_the_timeout(tmp_path):
    db = tmp_path / "held.duckdb"
    warehouse.connect(db).close()
    ctx = multiprocessing.get_context("spawn")
    locked, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(db, locked, release))
    holder.start()
    try:
        assert locked.wait(60)
        started = time.monotonic()
        with pytest.raises(MicrotrialsError, match=r"another microtrials run holds the warehouse .* \(waited 0.5 s\)"):
            warehouse.connect_with_retry(db, timeout_s=0.5)
        assert time.monotonic() - started < 5
    finally:
        release.set()
        holder.join(30)
    warehouse.connect_with_retry(db, timeout_s=5).close()  # free again


# ---- property: random malformed rows and files never crash the loader or lose a good row ----

import csv  # noqa: E402
import io  # noqa: E402
import re  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ANY_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
NOT_A_URN = ANY_TEXT.filter(lambda v: not re.fullmatch(r"\d{6}", v.strip()))
BAD_VALUE = {
    "school_urn": st.one_of(st.just("111601"), NOT_A_URN),
    "arm": st.one_of(ANY_TEXT, st.sampled_from(["treat", "Control ", "", "INTERVENTION"])),
    "outcome": st.one_of(ANY_TEXT, st.sampled_from(["inf", "-nan", "1e999", "12,5", "", " 7 "])),
    "baseline": st.one_of(ANY_TEXT, st.sampled_from(["1e400", "x", ""])),
    "fsm": ANY_TEXT, "send": ANY_TEXT, "gender": ANY_TEXT,
    "year_group": st.one_of(ANY_TEXT, st.integers(-5, 30).map(str)),
    "intervention": st.one_of(ANY_TEXT, st.just("'); DROP TABLE pupils; --")),
    "outcome_measure": ANY_TEXT,
}


@st.composite
def messy_extract(draw):
    """(file bytes, good pupil ids) for a file with good rows, broken rows, blank rows and extra columns."""
    if draw(st.integers(0, 9)) == 0:  # now and then, not a CSV at all
        return draw(st.binary(max_size=300)), set()
    extra = draw(st.lists(st.sampled_from(["pupil_name", "DOB", "Notes", ""]), max_size=2, unique=True))
    header = [draw(st.sampled_from([c, c.upper(), f" {c} ", c.title()])) for c in EXTRACT_HEADER] + extra
    good, records = set(), []
    for i in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["good", "good", "bad", "bad", "blank", "ragged"]))
        row = pupil_rows(1, start=i, prefix="GOODPUPIL")[0] + [f"SECRET-{i}"] * len(extra)
        if kind == "good":
            good.add(row[1])
        elif kind == "bad":
            row[1] = f"BADPUPIL-{i}" if draw(st.booleans()) else ""
            for column in draw(st.lists(st.sampled_from(sorted(BAD_VALUE)), min_size=1, max_size=3)):
                row[COLUMN[column]] = draw(BAD_VALUE[column])
        elif kind == "blank":
            row = [""] * draw(st.sampled_from([0, len(row)]))
        else:
            row[1] = f"BADPUPIL-{i}"
            row = row[: draw(st.integers(1, len(row) - 1))] if draw(st.booleans()) else row + ["SECRET-x"]
        records.append(row)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    writer.writerow(header)
    writer.writerows(records)
    bom = "\ufeff" if draw(st.booleans()) else ""
    return (bom + out.getvalue()).encode("utf-8"), good


@settings(max_examples=examples(50), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messy_extract())
def test_random_messy_files_never_crash_or_lose_a_good_row(tmp_path, case):
    content, good_ids = case
    path = tmp_path / "111601.csv"
    path.write_bytes(content)
    con = duckdb.connect()
    con.execute(warehouse.sql("schema"))
    try:
        report = load_file(con, path, KEY)
        assert report.status in ("loaded", "rejected")
        stored = " ".join(
            table(con, t).astype(str).to_csv() for t in ("pupils", "quarantine", "load_warnings", "deliveries")
        )
        stored += load_report_frame([report]).to_csv()
        assert "SECRET" not in stored and "GOODPUPIL" not in stored and "BADPUPIL" not in stored
        swapped = report.status == "rejected" and "columns may be swapped" in (report.reason or "")
        if good_ids and not swapped:  # a file that looks swapped is rejected whole, saying so (issue 15)
            assert report.status == "loaded", report.reason
            keys = set(table(con, "pupils")["pupil_key"])
            assert {key_of(p) for p in good_ids} <= keys
            assert report.rows_loaded + report.rows_quarantined == report.rows_read
            assert report.rows_loaded == len(keys)
    finally:
        con.close()


def test_an_older_file_left_in_the_folder_does_not_undo_a_newer_one(con, write_extract):
    write_extract("111601_a.csv", pupil_rows(3))
    folder = write_extract("111601_b.csv", pupil_rows(2, start=2)).parent  # pupil 1 of the 3 left out
    first = load_folder(con, folder, KEY)
    assert [r.status for r in first] == ["loaded", "loaded"]
    before = snapshot(con) | {"deliveries": table(con, "deliveries")}
    assert sorted(before["pupils"]["source_file"]) == ["111601_b.csv", "111601_b.csv"]
    again = load_folder(con, folder, KEY)
    assert [r.status for r in again] == ["unchanged", "unchanged"]
    assert again[0].rows_loaded == 3 and again[0].trials == [("Reading", "NGRT")]  # its stored report
    after = snapshot(con) | {"deliveries": table(con, "deliveries")}
    for name in before:
        pd.testing.assert_frame_equal(before[name], after[name])
