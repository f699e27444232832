"""What keeps a run over thousands of school partitions linear (issue 13): partitions read once per
run, one planned event per asset, the identifier check looking up only what the files hold."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import duckdb

from microtrials import publish
from pipelines.runs import partitions_fixed_for_the_run

REPO = Path(__file__).resolve().parents[1]


def test_a_run_reads_its_partitions_once_and_sees_its_own_additions(tmp_path, monkeypatch):
    shutil.copy(REPO / "dagster.yaml", tmp_path)
    monkeypatch.chdir(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("schools", ["100001", "100002"])
    reads = []
    real = instance.get_dynamic_partitions

    def counted(partitions_def_name):
        reads.append(partitions_def_name)
        return real(partitions_def_name)

    monkeypatch.setattr(instance, "get_dynamic_partitions", counted)
    partitions = dg.DynamicPartitionsDefinition(name="schools")
    with partitions_fixed_for_the_run(instance, "schools"):
        for _ in range(50):  # what Dagster does for each add_asset_metadata(partition_key=...)
            with dg.partition_loading_context(dynamic_partitions_store=instance):
                keys = partitions.get_partition_keys_in_range(dg.PartitionKeyRange("100001", "100002"))
        assert keys == ["100001", "100002"]
        assert instance.has_dynamic_partition("schools", "100002")
        assert not instance.has_dynamic_partition("schools", "100003")
        assert reads == ["schools"]  # one read of storage, not 50
        instance.add_dynamic_partitions("schools", ["100003"])
        assert instance.has_dynamic_partition("schools", "100003")  # its own addition is seen
        assert instance.get_dynamic_partitions("schools") == ["100001", "100002", "100003"]
    assert instance.get_dynamic_partitions("schools") == ["100001", "100002", "100003"]
    assert len(reads) == 3  # after the run every call reads storage again
    instance.dispose()


def test_the_cli_asks_for_one_planned_event_per_asset(tmp_path, monkeypatch):
    from microtrials import cli

    monkeypatch.delenv("DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS", raising=False)
    shutil.copy(REPO / "dagster.yaml", tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    cli.use_instance_environment()
    import os

    assert os.environ["DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"] == "1"
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
