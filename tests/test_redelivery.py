"""A re-delivery only replaces what it can replace; every folder entry is in the report; workers die with the loader."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from microtrials.ingest import warehouse
from microtrials.ingest.loading import load_file, load_folder, load_report_frame
from tests.conftest import EXTRACT_HEADER, REPO_ROOT, pupil_rows

KEY = b"test-key"
ARM = EXTRACT_HEADER.index("arm")


@pytest.fixture
def con(tmp_path):
    connection = warehouse.connect(tmp_path / "warehouse.duckdb")
    yield connection
    connection.close()


def coded(rows):
    """The rows with arm coded I/C, as some MIS exports do: every row breaks the arm rule."""
    return [r[:ARM] + [r[ARM][0].upper()] + r[ARM + 1 :] for r in rows]


def pupils_of(con, urn="111601"):
    return con.execute(
        "SELECT intervention, count(*), min(source_file) FROM pupils WHERE school_urn = ? GROUP BY 1 ORDER BY 1",
        [urn],
    ).fetchall()


def test_an_all_quarantined_redelivery_keeps_the_70_good_rows(con, write_extract):
    load_file(con, write_extract("111601.csv", pupil_rows(70)), KEY)
    assert pupils_of(con) == [("Reading", 70, "111601.csv")]
    report = load_file(con, write_extract("111601_resent.csv", coded(pupil_rows(70))), KEY)
    assert pupils_of(con) == [("Reading", 70, "111601.csv")]  # the earlier rows survive
    assert (report.status, report.rows_read, report.rows_loaded, report.rows_quarantined) == ("held", 70, 0, 70)
    assert list(report.trials_held) == ["Reading / NGRT"]
    assert report.changes == [
        "111601 Reading: held, not applied: it would replace 70 pupils by 0, more than half of them gone; the "
        "earlier 70 pupils stay as they were (to apply it on purpose: microtrials accept 111601_resent.csv)"
    ]
    assert report.reason == report.changes[0]
    assert "correct them and send the file again" in report.trials_held["Reading / NGRT"]
    # the officer sees it in the load report, and the deliveries and change_sets tables say the same
    frame = load_report_frame([report])
    assert frame[["status", "reason", "changes"]].values.tolist() == [["held", report.reason, report.changes[0]]]
    deliveries = con.execute("SELECT file_name, status, rows_loaded, reason FROM deliveries ORDER BY loaded_at").fetchall()
    assert deliveries[-1] == ("111601_resent.csv", "held", 0, report.reason)
    assert con.execute("SELECT state, pupils_before, pupils_after, removed, message FROM change_sets "
                       "WHERE file_name = '111601_resent.csv'").fetchall() == [("held", 70, 0, 70, report.changes[0])]
    # the new file's rows set aside stay visible (what to fix); the kept delivery's quarantine is untouched
    lines = con.execute("SELECT count(*) FROM quarantine WHERE source_file = '111601_resent.csv'").fetchone()[0]
    assert lines == 70
    # seen again: still rejected, recorded once
    again = load_file(con, write_extract("111601_resent.csv", coded(pupil_rows(70))), KEY)
    assert again.status == "held" and pupils_of(con) == [("Reading", 70, "111601.csv")]
    assert again.changes == report.changes  # still said, never applied by a run
    assert con.execute("SELECT count(*) FROM deliveries WHERE file_name = '111601_resent.csv'").fetchone()[0] == 1
    assert con.execute("SELECT count(*) FROM change_sets WHERE file_name = '111601_resent.csv'").fetchone()[0] == 1


def test_losing_more_than_half_keeps_the_earlier_rows_half_replaces(con, write_extract):
    load_file(con, write_extract("111601.csv", pupil_rows(70)), KEY)
    fewer = load_file(con, write_extract("111601_v2.csv", pupil_rows(34)), KEY)  # 34 < 70 / 2
    assert fewer.status == "held" and "it would replace 70 pupils by 34" in fewer.reason
    assert "tell the data team" in fewer.trials_held["Reading / NGRT"]  # no row set aside: perhaps pupils left
    assert pupils_of(con) == [("Reading", 70, "111601.csv")]
    half = load_file(con, write_extract("111601_v3.csv", pupil_rows(35)), KEY)  # exactly half: replaces
    assert (half.status, half.rows_loaded, half.trials_held) == ("loaded", 35, {})
    assert half.changes == ["111601 Reading: 70 pupils replaced by 35 (35 removed)"]
    assert pupils_of(con) == [("Reading", 35, "111601_v3.csv")]


def test_only_the_losing_trial_is_kept_the_others_are_replaced(con, write_extract):
    first = pupil_rows(40) + pupil_rows(40, intervention="Maths", measure="PUMA")
    load_file(con, write_extract("111601.csv", first), KEY)
    second = coded(pupil_rows(40)) + pupil_rows(38, intervention="Maths", measure="PUMA", start=21)  # 20 of 40 gone
    report = load_file(con, write_extract("111601.csv", second), KEY)  # same name, new content
    assert report.status == "partly held" and report.rows_loaded == 38
    assert list(report.trials_held) == ["Reading / NGRT"]
    assert report.reason.startswith("111601 Reading: held, not applied: it would replace 40 pupils by 0")
    assert report.changes[0] == "111601 Maths: 40 pupils replaced by 38 (18 added, 20 removed)"
    assert pupils_of(con) == [("Maths", 38, "111601.csv"), ("Reading", 40, "111601.csv")]
    kept = con.execute("SELECT count(DISTINCT delivery_id) FROM pupils WHERE intervention = 'Reading'").fetchone()[0]
    assert kept == 1
    # the stored report of this (unchanged) file says the same on the next run
    again = load_file(con, write_extract("111601.csv", second), KEY)
    assert again.status == "partly held" and again.trials_held == report.trials_held
    assert again.changes == report.changes[1:]  # only what is still held
    assert pupils_of(con) == [("Maths", 38, "111601.csv"), ("Reading", 40, "111601.csv")]


def test_a_first_delivery_with_no_good_rows_is_rejected(con, write_extract):
    """Red-team finding 11: a file of which nothing loads is rejected (it was 'loaded', 0 rows)."""
    report = load_file(con, write_extract("111601.csv", coded(pupil_rows(5))), KEY)
    assert (report.status, report.rows_loaded, report.trials_rejected) == ("rejected", 0, {})


# ---- every entry of the folder is accounted for ----------------------------------------------


def test_every_entry_that_is_not_an_extract_is_reported_as_ignored(con, write_extract):
    folder = write_extract("111601.csv", pupil_rows(2)).parent
    (folder / "old deliveries").mkdir()
    (folder / "old deliveries" / "111601.csv").write_text("not looked at")
    (folder / "notes.txt").write_text("call the school")
    (folder / ".DS_Store").write_bytes(b"\0")
    (folder / ".111602.csv").write_text("hidden")
    (folder / "~$111603.xlsx").write_bytes(b"lock")
    (folder / "111604.xls").write_bytes(b"\xd0\xcf\x11\xe0")
    (folder / "gone.csv").symlink_to(folder / "nowhere.csv")
    reports = {r.file_name: r for r in load_folder(con, folder, KEY)}
    assert {name: r.status for name, r in reports.items()} == {
        "111601.csv": "loaded",
        "111604.xls": "rejected",  # a spreadsheet sent instead of a CSV: a delivery, rejected
        "old deliveries": "ignored",
        "notes.txt": "ignored",
        ".DS_Store": "ignored",
        ".111602.csv": "ignored",
        "~$111603.xlsx": "ignored",
        "gone.csv": "ignored",
    }
    assert "a folder: files inside folders are not loaded" in reports["old deliveries"].reason
    assert "only .csv and .xlsx files are loaded" in reports["notes.txt"].reason
    assert "hidden file" in reports[".111602.csv"].reason and "rename it without the dot" in reports[".111602.csv"].reason
    assert "lock file" in reports["~$111603.xlsx"].reason
    assert "not a regular file" in reports["gone.csv"].reason
    frame = load_report_frame(list(reports.values()))
    ignored = frame[frame["status"] == "ignored"]
    assert len(ignored) == 6 and ignored["reason"].str.len().gt(0).all()
    # ignored entries are not deliveries
    assert con.execute("SELECT count(*) FROM deliveries WHERE status = 'ignored'").fetchone()[0] == 0


# ---- loader workers die with their parent ----------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from microtrials.ingest import loading
    from microtrials.ingest import warehouse

    pids = Path(sys.argv[2])
    real_prepare = loading._prepare

    def slow_prepare(*args):  # the test hook: each worker says who it is, then takes its time
        (pids / str(os.getpid())).write_text("")
        time.sleep(120)
        return real_prepare(*args)

    loading._prepare = slow_prepare
    loading.PARALLEL_MIN_FILES = 1
    con = warehouse.connect(Path(sys.argv[3]))
    loading.load_folder(con, Path(sys.argv[1]), b"test-key")
    """
)


def _children(parent: int) -> list[int]:
    """PIDs whose parent is ``parent`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux") or (os.cpu_count() or 1) < 2, reason="forked workers: Linux, 2+ cores")
def test_loader_workers_die_when_the_loader_is_killed(tmp_path, write_extract):
    for i in range(4):
        folder = write_extract(f"11160{i}.csv", pupil_rows(3, urn=f"11160{i}")).parent
    pids = tmp_path / "pids"
    pids.mkdir()
    env = os.environ | {"PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(folder), str(pids), str(tmp_path / "w.duckdb")], env=env
    )
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not list(pids.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.1)
        busy = [int(p.name) for p in pids.iterdir()]
        assert busy, "no worker started"
        workers = sorted(set(busy) | set(_children(child.pid)))  # the busy one and any idle ones
        assert len(workers) >= 2, f"expected a pool of workers, found {workers}"
        assert all(_alive(pid) for pid in workers)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors = [pid for pid in workers if _alive(pid)]
        assert survivors == [], f"loader workers outlived their parent: {survivors}"
    finally:
        if child.poll() is None:
            child.kill()
        for pid in set(workers) | {int(p.name) for p in pids.iterdir()}:  # no stray worker, even on failure
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_redelivery_spelled_differently_replaces_never_duplicates(con, write_extract):
    """Finding 4: `reciprocal  Reading` is the same trial as `Reciprocal reading` (names.match_key)."""
    load_file(con, write_extract("111601.csv", pupil_rows(20, intervention="Reciprocal reading")), KEY)
    report = load_file(con, write_extract("111601-v2.csv", pupil_rows(20, intervention="reciprocal  Reading")), KEY)
    assert report.status == "loaded"
    assert pupils_of(con) == [("reciprocal  Reading", 20, "111601-v2.csv")]


def test_a_smaller_redelivery_spelled_differently_is_held(con, write_extract):
    load_file(con, write_extract("111601.csv", pupil_rows(20, intervention="Reciprocal reading")), KEY)
    report = load_file(con, write_extract("111601-v2.csv", pupil_rows(4, intervention="RECIPROCAL READING")), KEY)
    assert report.status == "held"
    assert pupils_of(con) == [("Reciprocal reading", 20, "111601.csv")]


def test_a_redelivery_losing_most_outcomes_keeps_the_earlier_rows(con, write_extract):
    """Finding 5: every outcome blank (same pupils) would wipe the school's results: held, said why."""
    load_file(con, write_extract("111601.csv", pupil_rows(20)), KEY)
    blank = pupil_rows(20)
    for row in blank:
        row[EXTRACT_HEADER.index("outcome")] = ""
    report = load_file(con, write_extract("111601-v2.csv", blank), KEY)
    assert report.status == "held"
    assert "it would leave 0 of the 20 outcome scores, more than half of them gone" in report.reason
    assert con.execute("SELECT count(outcome) FROM pupils").fetchone() == (20,)
    half = pupil_rows(20)
    for row in half[:9]:
        row[EXTRACT_HEADER.index("outcome")] = ""
    assert load_file(con, write_extract("111601-v3.csv", half), KEY).status == "loaded"  # 11 of 20: replaces
    assert con.execute("SELECT count(outcome), count(*) FROM pupils").fetchone() == (11, 20)


def test_a_file_with_no_row_loaded_is_rejected_saying_why(con, write_extract):
    """Finding 11: arm coded Treatment/Comparison on every row: nothing loads, so the file is rejected."""
    rows = [r[:ARM] + [("Treatment", "Comparison")[i % 2]] + r[ARM + 1 :] for i, r in enumerate(pupil_rows(71))]
    report = load_file(con, write_extract("111601.csv", rows), KEY)
    assert report.status == "rejected"
    assert report.reason.startswith("111601.csv: none of the file's 71 rows could be loaded (arm not ")
    frame = load_report_frame([report])
    assert frame.loc[0, "status"] == "rejected" and "none of the file's 71 rows" in frame.loc[0, "reason"]
    assert con.execute("SELECT status FROM deliveries").fetchall() == [("rejected",)]
    assert con.execute("SELECT count(*) FROM quarantine").fetchone() == (71,)  # the school is told each line
    assert load_file(con, write_extract("111601.csv", rows), KEY).status == "rejected"  # and again next run


def test_a_redelivery_under_a_registered_alias_replaces(con, write_extract):
    """Finding 4: the registry stored in the warehouse says `RR` is an alias of `Reciprocal reading`."""
    con.execute(warehouse.sql("registry_schema"))
    con.execute(
        "INSERT INTO registry_rounds (sha256, line, intervention, outcome_measure, round, start_date, schools, aliases) "
        "VALUES ('x', 2, 'Reciprocal reading', 'NGRT', 'Round 1', DATE '2025-09-01', '111601', 'RR|Recip. reading')"
    )
    load_file(con, write_extract("111601.csv", pupil_rows(20, intervention="Reciprocal reading")), KEY)
    report = load_file(con, write_extract("111601-v2.csv", pupil_rows(20, intervention="rr")), KEY)
    assert report.status == "loaded"
    assert pupils_of(con) == [("rr", 20, "111601-v2.csv")]


def test_sending_an_earlier_file_again_undoes_a_wrong_one(con, write_extract):
    """A school sends a file, then a wrong one under the same name, then the first again: the
    first's rows are in the warehouse again (the latest delivery wins), not 'unchanged'."""
    first = pupil_rows(20)
    wrong = [row[:5] + [str(int(row[5]) + 7)] + row[6:] for row in first]  # same pupils, other outcomes
    load_file(con, write_extract("111601.csv", first), KEY)
    assert load_file(con, write_extract("111601.csv", wrong), KEY).status == "loaded"
    again = load_file(con, write_extract("111601.csv", first), KEY)
    assert again.status == "loaded"
    outcomes = sorted(r[0] for r in con.execute("SELECT outcome FROM pupils WHERE school_urn = '111601'").fetchall())
    assert outcomes == sorted(float(row[5]) for row in first)
    assert load_file(con, write_extract("111601.csv", first), KEY).status == "unchanged"
