"""School partitions: which files a partition loads, and many partitions loading in parallel processes."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import dagster as dg
import pytest

from microtrials.ingest import warehouse
from pipelines.partitions import SCHOOLS, file_key, files_by_school, school_key
from tests.conftest import pupil_rows

# Dagster's documented run tags for a partition range (strings: no private import).
ASSET_PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
ASSET_PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"

URNS = ["111601", "111602", "111603", "111604", "111605", "111606"]


def test_a_file_belongs_to_its_schools_urn(tmp_path, write_extract):
    write_extract("oak.csv", pupil_rows(3, urn="111601"))
    write_extract("oak-maths.csv", pupil_rows(3, urn="111601", intervention="Maths"))
    write_extract("elm.csv", pupil_rows(3, urn="111602"))
    write_extract("elm.xlsx", b"PK\x03\x04")
    write_extract("mixed.csv", pupil_rows(2, urn="111601") + pupil_rows(2, urn="111603"))
    write_extract("~$oak.csv", "lock file of an open workbook")
    grouped = {key: [p.name for p in paths] for key, paths in files_by_school(tmp_path / "extracts").items()}
    assert grouped == {
        "111601": ["oak-maths.csv", "oak.csv"],
        "111602": ["elm.csv"],
        "file-elm": ["elm.xlsx"],
        "file-mixed": ["mixed.csv"],
    }
    assert file_key(tmp_path / "Year 6 — results!.csv") == "file-Year_6_results"
    assert school_key(tmp_path / "extracts" / "elm.csv") == "111602"


def load_schools_job():
    """The pupils asset alone under the multiprocess executor (reconstructable: resources from the env)."""
    from pipelines.assets.loading import pupils
    from pipelines.resources import default_resources

    job = dg.define_asset_job("load_schools", selection="pupils", executor_def=dg.multiprocess_executor)
    return dg.Definitions(assets=[pupils], jobs=[job], resources=default_resources()).resolve_job_def("load_schools")


def execute_run(instance_ref, tags) -> tuple[bool, list[str]]:
    """One run of load_schools_job on the instance (called in a process of its own)."""
    instance = dg.DagsterInstance.from_ref(instance_ref)
    try:
        with dg.execute_job(dg.reconstructable(load_schools_job), instance=instance, tags=tags) as result:
            return result.success, [e.message or "" for e in result.all_events]
    finally:
        instance.dispose()


@pytest.mark.slow
def test_many_school_partitions_load_in_parallel_processes(tmp_path, write_extract, monkeypatch):
    for i, urn in enumerate(URNS):
        write_extract(f"{urn}.csv", pupil_rows(20 + i, urn=urn))
    db = tmp_path / "warehouse.duckdb"
    monkeypatch.setenv("MICROTRIALS_EXTRACTS", str(tmp_path / "extracts"))
    monkeypatch.setenv("MICROTRIALS_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("MICROTRIALS_DB", str(db))
    # Four runs at once, each loading its schools in a step process of its own: they contend for
    # the DuckDB file's single-writer lock (no pool limit here), which the Warehouse resource waits out.
    runs = [{"dagster/partition": "111601"}, {"dagster/partition": "111602"},
            {ASSET_PARTITION_RANGE_START_TAG: "111603", ASSET_PARTITION_RANGE_END_TAG: "111604"},
            {ASSET_PARTITION_RANGE_START_TAG: "111605", ASSET_PARTITION_RANGE_END_TAG: "111606"}]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(SCHOOLS, URNS)
        # One process per run (Dagster's run machinery is not meant to share a process between threads).
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(len(runs), mp_context=spawn) as pool:
            outcomes = list(pool.map(execute_run, [instance.get_ref()] * len(runs), runs))
        materialized = instance.get_materialized_partitions(dg.AssetKey("pupils"))
        step_processes = {
            r.dagster_event.pid
            for run in instance.get_runs()
            for r in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)
        }
    assert all(success for success, _ in outcomes), [m for _, ms in outcomes for m in ms if "rror" in m]
    assert not [m for _, messages in outcomes for m in messages if "lock" in m.lower() and "rror" in m]
    assert materialized == set(URNS)
    assert len(step_processes) == len(runs)
    with warehouse.connect(db, read_only=True) as con:
        counts = dict(con.execute("SELECT school_urn, count(*) FROM pupils GROUP BY 1").fetchall())
        delivered = con.execute("SELECT count(*) FROM deliveries WHERE status = 'loaded'").fetchall()[0][0]
        report = con.execute("SELECT file_name FROM load_report ORDER BY 1").fetchall()
    assert counts == {urn: 20 + i for i, urn in enumerate(URNS)}
    assert delivered == len(URNS)
    assert [r[0] for r in report] == [f"{urn}.csv" for urn in URNS]


@pytest.fixture
def load(tmp_path, monkeypatch):
    """``load(*schools)``: one in-process run of the pupils asset for those partitions."""
    from pipelines.assets.loading import pupils
    from pipelines.resources import Settings, Warehouse

    resources = {
        "settings": Settings(extracts_dir=str(tmp_path / "extracts"), out_dir=str(tmp_path / "out")),
        "warehouse_db": Warehouse(database=str(tmp_path / "warehouse.duckdb")),
    }
    def run(*schools):
        instance.add_dynamic_partitions(SCHOOLS, [s for s in schools if not instance.has_dynamic_partition(SCHOOLS, s)])
        result = None
        for school in schools:
            result = dg.materialize([pupils], partition_key=school, resources=resources, instance=instance)
        with warehouse.connect(tmp_path / "warehouse.duckdb", read_only=True) as con:
            counts = dict(con.execute("SELECT school_urn, count(*) FROM pupils GROUP BY 1").fetchall())
            report = con.execute("SELECT file_name, status FROM load_report ORDER BY 1").fetchall()
        return result, counts, report

    with dg.instance_for_test() as instance:
        yield run


def test_a_partition_loads_only_its_school_and_a_vanished_file_keeps_its_rows(tmp_path, write_extract, load):
    write_extract("oak.csv", pupil_rows(10, urn="111601"))
    write_extract("elm.csv", pupil_rows(12, urn="111602"))
    result, counts, report = load("111601")
    assert counts == {"111601": 10}
    assert report == [("oak.csv", "loaded")]
    row_count = result.asset_observations_for_node("pupils")[0].metadata["dagster/row_count"].value
    assert row_count == 10

    _, counts, report = load("111602")
    assert counts == {"111601": 10, "111602": 12}
    assert report == [("elm.csv", "loaded"), ("oak.csv", "loaded")]

    (tmp_path / "extracts" / "oak.csv").unlink()
    _, counts, report = load("111601")
    assert counts == {"111601": 10, "111602": 12}, "a school whose file has gone keeps its rows"
    assert report == [("elm.csv", "loaded")], "the load report lists the files in the folder"
