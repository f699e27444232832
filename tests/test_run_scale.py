"""What keeps a run over thousands of school partitions linear: partition queries per run, planned events, identifier look-ups."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from microtrials.publish import publish
from tests.helpers.extracts import extract_csv, pupil_rows

REPO = Path(__file__).resolve().parents[1]


def _sensor_style_run(tmp_path: Path, n_schools: int) -> tuple[dict[str, int], int]:
    """Deliver ``n_schools`` new school files, let the extracts sensor ask for its run, execute that run
    (as the daemon's run worker would) and count the instance storage's partition queries during it:
    ({"listings": ..., "lookups": ...}, schools loaded)."""
    from pipelines.definitions import defs
    from pipelines.resources import Settings, Warehouse
    from pipelines.sensors import extracts_sensor

    extracts = tmp_path / f"extracts-{n_schools}"
    extracts.mkdir()
    for i in range(n_schools):
        urn = f"{400000 + i:06d}"
        (extracts / f"{urn}.csv").write_text(extract_csv(pupil_rows(4, urn=urn)))
    resources = {"settings": Settings(extracts_dir=str(extracts), out_dir=str(tmp_path / f"out-{n_schools}")),
                 "warehouse_db": Warehouse(database=str(tmp_path / f"w-{n_schools}.duckdb"))}
    with dg.instance_for_test() as instance:
        tick = extracts_sensor(dg.build_sensor_context(instance=instance, resources=resources))
        for request in tick.dynamic_partitions_requests:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        [run] = tick.run_requests  # new schools are adjacent: one run over their range
        storage = instance.event_log_storage
        counts = {"listings": 0, "lookups": 0}

        def counted(name, real):
            def call(*args, **kwargs):
                counts[name] += 1
                return real(*args, **kwargs)
            return call

        # Counting the storage's answers (the test's own instance; the pipeline patches nothing).
        storage.get_dynamic_partitions = counted("listings", storage.get_dynamic_partitions)
        storage.has_dynamic_partition = counted("lookups", storage.has_dynamic_partition)
        job = defs.get_job_def("load_and_refresh")
        result = job.execute_in_process(instance=instance, tags=run.tags, resources=resources, raise_on_error=False)
        assert result.success
        loaded = len(result.asset_observations_for_node("pupils"))
    return counts, loaded


@pytest.mark.slow
def test_partition_queries_of_a_sensor_run_do_not_grow_with_the_schools(tmp_path):
    few, loaded_few = _sensor_style_run(tmp_path, 4)
    many, loaded_many = _sensor_style_run(tmp_path, 400)
    assert (loaded_few, loaded_many) == (4, 400)
    assert many == few, (few, many)  # the same handful of queries for 4 schools and for 400
    assert many["listings"] <= 12, many


def test_the_cli_asks_for_one_planned_event_per_asset_and_batched_event_writes(tmp_path, monkeypatch):
    import os

    from microtrials import cli

    monkeypatch.delenv("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", raising=False)
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "250")  # a deployment's own choice is kept
    shutil.copy(REPO / "dagster.yaml", tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    cli.use_instance_environment()

    assert os.environ["DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"] == "1"
    assert os.environ["DAGSTER_EVENT_BATCH_SIZE"] == "250"
    monkeypatch.delenv("DAGSTER_EVENT_BATCH_SIZE")
    cli.use_instance_environment()
    assert os.environ["DAGSTER_EVENT_BATCH_SIZE"] == "1000"
    monkeypatch.delenv("DAGSTER_EVENT_BATCH_SIZE")  # restored (unset) after the test
    assert dg.DagsterInstance.ephemeral().event_log_storage.supports_partition_subset_in_asset_materialization_planned_events


def test_identifier_check_finds_a_key_without_loading_every_key():
    con = duckdb.connect()
    con.execute("CREATE TABLE pupils (pupil_key VARCHAR)")
    keys = [f"{i:064x}" for i in range(1, 2001)]
    con.execute("INSERT INTO pupils SELECT unnest($keys)", {"keys": keys})
    other = "f" * 64  # 64 hex digits that are not a pupil key (e.g. a file's sha256)
    files = {"a.csv": f"school,g\n100001,{keys[7]}\n".encode(), "b.html": f"<p>{other}</p>", "c.csv": b"x,y\n1,2\n"}
    assert publish.hex_candidates(files) == {keys[7], other}
    assert publish.pupil_keys_in(con, files) == {keys[7]}
    assert publish.identifier_findings(files, publish.pupil_keys_in(con, files)) == [("a.csv", "1 pupil_key value(s)")]
    assert publish.pupil_keys_in(con, {"c.csv": b"x,y\n1,2\n"}) == set()
