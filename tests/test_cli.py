"""`microtrials run` as an officer runs it: a subprocess on a persistent instance of its own."""

from __future__ import annotations

import shutil

import dagster as dg
import pandas as pd
import pytest

from tests.conftest import REPO_ROOT, SHARED, pupil_rows
from tests.helpers.cli import run_cli


@pytest.mark.slow
def test_run_loads_every_school_in_one_run_and_publishes(tmp_path, monkeypatch):
    extracts = tmp_path / "extracts"
    shutil.copytree(SHARED / "reference" / "extracts", extracts)
    done = run_cli(tmp_path, extracts, "cli-test-key-not-secret-0b9e4d71a3c8f256")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"evidence table: {tmp_path / 'out' / 'evidence_table.csv'}" in done.stdout
    table = pd.read_csv(tmp_path / "out" / "evidence_table.csv")
    assert sorted(table["intervention"]) == ["Maths mastery", "Reciprocal reading"]
    assert (tmp_path / "home" / "data" / "dagster" / "storage").is_dir(), "the instance is under DAGSTER_HOME"

    # A second delivery from one school (one more pupil file) and a run again: still one run,
    # every school's partition materialised twice, and the instance remembers the first run.
    shutil.copy(extracts / "111601.csv", extracts / "111601-resend.csv")
    again = run_cli(tmp_path, extracts, "cli-test-key-not-secret-0b9e4d71a3c8f256")
    assert again.returncode == 0, again.stderr[-3000:]
    monkeypatch.chdir(tmp_path / "home")  # the yaml's storage paths are relative to it
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    instance = dg.DagsterInstance.get()
    try:
        runs = instance.get_runs()
        assert len(runs) == 2 and {r.job_name for r in runs} == {"load_and_refresh"}
        assert len(instance.get_dynamic_partitions("schools")) == 25
        assert instance.get_materialized_partitions(dg.AssetKey("pupils")) == set(
            instance.get_dynamic_partitions("schools"))
        # the statistics' notes ("evidence strength 3 of 5 before deductions ...") are in the run's log
        # for evaluators, not on the officer's terminal
        notes = [e.user_message for e in instance.all_logs(runs[0].run_id) if "before deductions" in (e.user_message or "")]
        assert len(notes) >= len(table) and "before deductions" not in again.stderr
    finally:
        instance.dispose()


@pytest.mark.slow
def test_run_refuses_real_extracts_without_a_pupil_key(tmp_path, write_extract):
    extracts = write_extract("school.csv", pupil_rows(4)).parent
    done = run_cli(tmp_path, extracts, None)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "MICROTRIALS_PUPIL_KEY is not set" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_run_refuses_a_missing_folder(tmp_path):
    done = run_cli(tmp_path, tmp_path / "missing", "k")
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_the_instance_queues_runs_and_limits_the_warehouse_pool(tmp_path, monkeypatch):
    from pipelines.assets.loading import pupils

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.chdir(home)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    instance = dg.DagsterInstance.get()
    try:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        config = instance.get_concurrency_config()
        assert config.run_queue_config.max_concurrent_runs == 4
        assert config.pool_config.default_pool_limit == 1
        assert instance.event_log_storage.supports_global_concurrency_limits
    finally:
        instance.dispose()
    assert pupils.op.pool == "warehouse"


@pytest.mark.slow
def test_after_a_run_the_sensors_first_tick_has_nothing_to_do_and_the_summary_names_rejections(tmp_path, monkeypatch):
    from pipelines.resources import Settings, Warehouse
    from pipelines.sensors import extracts_sensor

    extracts = tmp_path / "extracts"
    shutil.copytree(SHARED / "reference" / "extracts", extracts)
    (extracts / "Oak Primary.xls").write_bytes(b"\xd0\xcf\x11\xe0 an old Excel workbook")
    done = run_cli(tmp_path, extracts, "cli-test-key-not-secret-0b9e4d71a3c8f256")
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    assert "files: 26 in" in done.stdout and "25 loaded" in done.stdout and "1 rejected" in done.stdout
    assert "  rejected Oak Primary.xls: only .csv and .xlsx files are loaded" in done.stdout
    assert "rows set aside (quarantine): 0" in done.stdout
    assert f"site: {out / 'index.html'} (preview: microtrials serve --out {out})" in done.stdout

    monkeypatch.chdir(tmp_path / "home")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    instance = dg.DagsterInstance.get()
    try:
        context = dg.build_sensor_context(
            instance=instance,
            cursor=None,  # the UI's first tick: the sensor has never run on this instance
            resources={"settings": Settings(extracts_dir=str(extracts), out_dir=str(out)),
                       "warehouse_db": Warehouse(database=str(tmp_path / "warehouse.duckdb"))},
        )
        first = extracts_sensor(context)
        assert not first.run_requests
        assert "26 file(s) already loaded by another run" in first.skip_reason.skip_message
        assert not first.dynamic_partitions_requests  # `microtrials run` registered every school
        # A school that then sends a changed file is loaded, and only that school.
        (extracts / "111601.csv").write_text((extracts / "111601.csv").read_text() + "\n")
        second = extracts_sensor(dg.build_sensor_context(
            instance=instance, cursor=first.cursor,
            resources={"settings": Settings(extracts_dir=str(extracts), out_dir=str(out)),
                       "warehouse_db": Warehouse(database=str(tmp_path / "warehouse.duckdb"))},
        ))
        assert [r.partition_key for r in second.run_requests] == ["111601"]
    finally:
        instance.dispose()


def test_the_summary_names_trials_not_estimable_or_not_refreshed_and_fails_only_when_none_refreshed(tmp_path):
    from microtrials import cli
    from microtrials.ingest import warehouse

    warehouse.connect(tmp_path / "w.duckdb").close()
    out = tmp_path / "out"
    out.mkdir()
    table = pd.DataFrame({
        "intervention": ["Reading", "Maths", "Pilot"],
        "outcome_measure": ["NGRT", "PUMA", "NGRT"],
        "status": ["published", "not_refreshed", "not_estimable"],
        "notes": ["", "the model did not converge this run; last figures kept",
                  "only one school has sent results so far"],
    })
    table.to_csv(out / "evidence_table.csv", index=False)
    lines, nothing_new = cli.summary(tmp_path / "extracts", out, tmp_path / "w.duckdb", "run-1")
    assert "trials: 3 (1 published, 1 not_refreshed, 1 not_estimable)" in lines
    assert "    Maths / PUMA: not refreshed: the model did not converge this run" in lines
    assert "    Pilot / NGRT: not estimable: only one school has sent results so far" in lines
    assert "    Reading / NGRT: published" in lines
    assert not nothing_new

    table.loc[0, "status"] = "not_refreshed"
    table.to_csv(out / "evidence_table.csv", index=False)
    _, nothing_new = cli.summary(tmp_path / "extracts", out, tmp_path / "w.duckdb", "run-2")
    assert nothing_new == "Reading / NGRT (no reason recorded); Maths / PUMA (the model did not converge this run)"


def test_the_summary_tells_the_changes_of_a_run_that_stopped_after_loading(tmp_path, write_extract):
    """Red team F10: a run killed after its load committed; the next run found every file unchanged and said
    "changes to the warehouse: none", though change_sets held the lines the killed run never told."""
    from microtrials import cli
    from microtrials.ingest import warehouse
    from microtrials.ingest.loading import load_files

    con = warehouse.connect(tmp_path / "w.duckdb")
    first = write_extract("581001.csv", pupil_rows(20, urn="581001", intervention="Alpha", measure="Score"))
    load_files(con, [first], b"summary-test-key-0123456789abcdef", run_id="run-told-0001")
    more = write_extract("581001.csv", pupil_rows(24, urn="581001", intervention="Alpha", measure="Score"))
    new = write_extract("581003.csv", pupil_rows(12, urn="581003", intervention="Alpha", measure="Score"))
    load_files(con, [more, new], b"summary-test-key-0123456789abcdef", run_id="killed-run-0002")
    assert con.execute("SELECT run_id, count(*) FROM change_sets GROUP BY 1 ORDER BY 1").fetchall() == [
        ("killed-run-0002", 2), ("run-told-0001", 1)]
    con.close()
    (tmp_path / "out").mkdir()
    lines, _ = cli.summary(tmp_path / "extracts", tmp_path / "out", tmp_path / "w.duckdb", "run-3", ("killed-run-0002",))
    start = lines.index("applied by an interrupted run (killed-r: it stopped or failed after loading, before its "
                        "summary), not told until now:")
    assert lines[start + 1:start + 3] == ["  581001 Alpha: 20 pupils replaced by 24 (4 added)",
                                          "  581003 Alpha: 12 pupils added"]
    lines, _ = cli.summary(tmp_path / "extracts", tmp_path / "out", tmp_path / "w.duckdb", "run-4")
    assert not any("interrupted run" in line for line in lines)


def test_the_runs_left_untold_are_those_ended_unsuccessfully_since_the_last_successful_run():
    from pipelines import launch
    from pipelines.definitions import defs

    job = defs.resolve_job_def("refresh")
    status = dg.DagsterRunStatus
    with dg.instance_for_test() as instance:
        def run(state):
            return instance.create_run_for_job(job_def=job, status=state).run_id

        run(status.FAILURE)  # before the last successful run: its summary's business
        run(status.SUCCESS)
        killed, stopped = run(status.FAILURE), run(status.CANCELED)
        run(status.STARTED)  # still going (another process): not ended
        current = run(status.SUCCESS)
        assert launch.unreported_runs(instance, current) == (killed, stopped)
        assert launch.unreported_runs(instance, run(status.SUCCESS)) == ()  # once told, never again
