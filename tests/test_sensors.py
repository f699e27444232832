"""The extracts sensor: new, changed, unchanged and deleted files, and runs that died, decided from the warehouse."""

from __future__ import annotations

import json
import os

import dagster as dg
import pytest

from pipelines.jobs import PARTITION_RANGE_END, PARTITION_RANGE_START
from pipelines.partitions import SCHOOLS
from pipelines.resources import Settings, Warehouse
from pipelines.sensors import extracts_sensor, run_blocks
from tests.conftest import pupil_rows


def tick(instance, extracts, cursor=None) -> dg.SensorResult:
    """One evaluation; the partitions it asks for are added, as the daemon would."""
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={
            "settings": Settings(extracts_dir=str(extracts), out_dir=str(extracts.parent / "out")),
            "warehouse_db": Warehouse(database=str(extracts.parent / "warehouse.duckdb")),
        },
    )
    result = extracts_sensor(context)
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def schools_of(result: dg.SensorResult) -> list[list[str]]:
    blocks = []
    for request in result.run_requests or []:
        if request.partition_key is not None:
            blocks.append([request.partition_key])
        else:
            blocks.append([request.tags[PARTITION_RANGE_START], request.tags[PARTITION_RANGE_END]])
    return blocks


def test_sensor_settings():
    assert extracts_sensor.name == "extracts_sensor"
    assert extracts_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert extracts_sensor.minimum_interval_seconds == int(os.environ.get("MICROTRIALS_SENSOR_INTERVAL", "15"))


def launch(instance, result: dg.SensorResult) -> list:
    """Create the runs a tick asked for, not yet started, as the daemon does (it queues them)."""
    from pipelines.definitions import defs

    job = defs.resolve_job_def("load_and_refresh")
    runs = []
    for request in result.run_requests or []:
        tags = dict(request.tags) | ({"dagster/partition": request.partition_key} if request.partition_key else {})
        runs.append(instance.create_run_for_job(job_def=job, tags=tags, status=dg.DagsterRunStatus.NOT_STARTED))
    return runs


def load(extracts) -> None:
    """What a run's load step commits: every file of the folder recorded in `deliveries`."""
    from microtrials.ingest import warehouse
    from microtrials.ingest.loading import load_folder

    con = warehouse.connect(extracts.parent / "warehouse.duckdb")
    try:
        load_folder(con, extracts, b"sensor-test-key-0123456789abcdef")
    finally:
        con.close()


def end(instance, runs) -> None:
    for run in runs:
        instance.report_run_failed(instance.get_run_by_id(run.run_id), message="ended (test)")


def test_new_changed_unchanged_deleted(tmp_path, write_extract):
    extracts = tmp_path / "extracts"
    write_extract("a.csv", pupil_rows(4, urn="111601"))
    write_extract("b.csv", pupil_rows(4, urn="111602"))
    with dg.instance_for_test() as instance:
        # New files: both schools registered, one run loads both (adjacent partitions) and refreshes.
        first = tick(instance, extracts)
        assert list(instance.get_dynamic_partitions(SCHOOLS)) == ["111601", "111602"]
        assert schools_of(first) == [["111601", "111602"]]
        assert first.run_requests[0].tags["microtrials/schools"] == "111601, 111602"
        cursor = json.loads(first.cursor)
        assert cursor["a.csv"]["school"] == "111601" and len(cursor["a.csv"]["sha256"]) == 64
        runs = launch(instance, first)

        # While that run is queued, nothing more is asked for.
        queued = tick(instance, extracts, first.cursor)
        assert not queued.run_requests and "2 file(s) waiting for a run" in queued.skip_reason.skip_message
        load(extracts)
        end(instance, runs)

        # Unchanged folder: nothing requested, even when a file is touched (mtime is not content).
        os.utime(extracts / "a.csv", (1_900_000_000, 1_900_000_000))
        same = tick(instance, extracts, first.cursor)
        assert not same.run_requests and not same.dynamic_partitions_requests
        assert json.loads(same.cursor) == cursor

        # Changed content of one file: only that school, no new partition.
        write_extract("b.csv", pupil_rows(6, urn="111602"))
        changed = tick(instance, extracts, same.cursor)
        assert schools_of(changed) == [["111602"]]
        assert not changed.dynamic_partitions_requests
        assert json.loads(changed.cursor)["b.csv"]["sha256"] != cursor["b.csv"]["sha256"]
        runs = launch(instance, changed)
        load(extracts)
        end(instance, runs)

        # A deleted file leaves the cursor; nothing is run and the partition stays.
        (extracts / "a.csv").unlink()
        deleted = tick(instance, extracts, changed.cursor)
        assert not deleted.run_requests
        assert set(json.loads(deleted.cursor)) == {"b.csv"}
        assert "111601" in instance.get_dynamic_partitions(SCHOOLS)

        # The same file put back: the warehouse records that content, so there is nothing to load.
        write_extract("a.csv", pupil_rows(4, urn="111601"))
        back = tick(instance, extracts, deleted.cursor)
        assert not back.run_requests and "a.csv" in json.loads(back.cursor)


@pytest.mark.slow
def test_a_sensor_run_that_died_is_retried_by_the_next_tick(tmp_path, write_extract):
    """Issue 21: a sensor run that died left its file unloaded for good (twelve ticks later, 0 rows).
    The warehouse's deliveries decide what is done, not the cursor."""
    import subprocess
    import sys

    extracts = tmp_path / "extracts"
    write_extract("a.csv", pupil_rows(4, urn="111601"))
    with dg.instance_for_test() as instance:
        first = tick(instance, extracts)
        (run,) = launch(instance, first)
        # The run worker starts and records its pid, as Dagster's does, then is killed before its load commits.
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            started(instance, run, worker.pid)
            alive = tick(instance, extracts, first.cursor)
            assert not alive.run_requests  # a live worker is left alone
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
        finally:
            worker.kill()
            worker.wait(timeout=10)
        retried = tick(instance, extracts, alive.cursor)
        assert schools_of(retried) == [["111601"]]
        dead = instance.get_run_by_id(run.run_id)
        assert dead.status == dg.DagsterRunStatus.FAILURE
        # The retry loads the file; the ticks after it have nothing to do.
        runs = launch(instance, retried)
        load(extracts)
        end(instance, runs)
        after = tick(instance, extracts, retried.cursor)
        assert not after.run_requests and after.skip_reason.skip_message.startswith("no new or changed")


def test_files_no_run_could_load_are_not_retried_for_ever(tmp_path, write_extract):
    from pipelines.sensors import MAX_ATTEMPTS

    extracts = tmp_path / "extracts"
    write_extract("a.csv", pupil_rows(4, urn="111601"))
    with dg.instance_for_test() as instance:
        result = tick(instance, extracts)
        for attempt in range(MAX_ATTEMPTS):
            assert schools_of(result) == [["111601"]], attempt
            end(instance, launch(instance, result))  # each run ends without loading the file
            result = tick(instance, extracts, result.cursor)
        assert not result.run_requests
        assert f"not retried after {MAX_ATTEMPTS} runs" in result.skip_reason.skip_message
        write_extract("a.csv", pupil_rows(5, urn="111601"))  # a new version is tried again
        assert schools_of(tick(instance, extracts, result.cursor)) == [["111601"]]


def started(instance, run, pid: int) -> None:
    """Mark ``run`` started by a run worker with process ``pid``, with the events Dagster's worker reports."""
    from dagster._core.events import EngineEventData  # the event's data, as the worker builds it

    instance.report_dagster_event(dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, job_name=run.job_name),
                                  run.run_id)
    instance.report_engine_event(f"Started process for run (pid: {pid}).", instance.get_run_by_id(run.run_id),
                                 EngineEventData.in_process(pid))


def test_unreadable_file_gets_a_file_key(tmp_path, write_extract):
    extracts = tmp_path / "extracts"
    write_extract("Oak Primary (final).xlsx", b"PK\x03\x04 not really a workbook")
    write_extract("two schools.csv", pupil_rows(2, urn="111601") + pupil_rows(2, urn="111602"))
    with dg.instance_for_test() as instance:
        result = tick(instance, extracts)
    keys = json.loads(result.cursor)
    assert keys["Oak Primary (final).xlsx"]["school"] == "file-Oak_Primary_final"
    assert keys["two schools.csv"]["school"] == "file-two_schools"


def test_changed_schools_far_apart_get_a_run_each():
    order = ["111601", "111602", "111603", "111604"]
    assert run_blocks(["111604", "111601", "111602"], order) == [["111601", "111602"], ["111604"]]
    assert run_blocks(["111603"], order) == [["111603"]]


@pytest.mark.slow
def test_a_busy_warehouse_postpones_the_tick_without_losing_the_files(tmp_path, write_extract):
    """While another process writes the warehouse, the tick skips and keeps its cursor: nothing is missed."""
    import subprocess
    import sys

    from microtrials.ingest import warehouse

    extracts = tmp_path / "extracts"
    write_extract("a.csv", pupil_rows(4, urn="111601"))
    warehouse.connect(tmp_path / "warehouse.duckdb").close()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('open', flush=True); "
         "time.sleep(60)", str(tmp_path / "warehouse.duckdb")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with dg.instance_for_test() as instance:
            busy = tick(instance, extracts)
            assert not busy.run_requests and busy.cursor is None
            assert "warehouse is busy" in busy.skip_reason.skip_message
            holder.kill()
            holder.wait(timeout=10)
            after = tick(instance, extracts)
            assert schools_of(after) == [["111601"]]
    finally:
        if holder.poll() is None:
            holder.kill()


def test_a_warehouse_made_by_the_previous_schema_is_read_then_brought_up_to_date(tmp_path, write_extract):
    """The sensor opens the warehouse read-only, so it cannot create the `latest_deliveries` view in a
    warehouse the previous version made: it counts no file as recorded (no error), and the run it
    asks for adds what is missing and finds the file it already holds unchanged."""
    import duckdb

    from microtrials.ingest import warehouse
    from microtrials.ingest.loading import load_file
    from pipelines.sensors import recorded_files
    from tests.helpers.extracts import FIXTURES

    key = b"sensor-test-key-0123456789abcdef"
    extracts = tmp_path / "extracts"
    path = write_extract("a.csv", pupil_rows(4, urn="111601"))
    scratch = warehouse.connect(tmp_path / "scratch.duckdb")
    load_file(scratch, path, key)
    sha = scratch.execute("SELECT delivery_id FROM deliveries").fetchone()[0]
    scratch.close()
    db = tmp_path / "warehouse.duckdb"
    old = duckdb.connect(str(db))  # the previous schema, holding what the previous version recorded
    old.execute((FIXTURES / "schema_2026-12-06.sql").read_text(encoding="utf-8"))
    old.execute(f"ATTACH '{tmp_path / 'scratch.duckdb'}' AS scratch (READ_ONLY)")
    for table in ("deliveries", "pupils", "pupil_key_fingerprint"):
        old.execute(f"INSERT INTO {table} BY NAME SELECT * FROM scratch.{table}")
    old.close()

    assert recorded_files(str(db), {"a.csv": sha}) == set()
    with dg.instance_for_test() as instance:
        assert schools_of(tick(instance, extracts)) == [["111601"]]
    con = warehouse.connect(db)  # the run's writing connection
    try:
        assert load_file(con, path, key).status == "unchanged"
        assert con.execute("SELECT count(*) FROM pupils").fetchone() == (4,)
    finally:
        con.close()
    assert recorded_files(str(db), {"a.csv": sha}) == {"a.csv"}
