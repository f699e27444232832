"""The pupils asset: each school partition tells its own story, in storage that does not grow per school."""

from __future__ import annotations

import re

import dagster as dg
import pytest

from pipelines.assets.loading import pupils
from pipelines.partitions import SCHOOLS, files_by_school
from pipelines.resources import Settings, Warehouse
from tests.conftest import EXTRACT_HEADER, pupil_rows

ARM = EXTRACT_HEADER.index("arm")
# Dagster's documented run tags for a partition range (strings, not a private import).
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def _urn(i: int) -> str:
    return f"{300000 + i:06d}"


def _run(tmp_path, instance, n_schools: int, write_extract, folder: str):
    """Write ``n_schools`` files (one with a bad row, one rejected whole) and load them in one run."""
    for i in range(n_schools):
        rows = pupil_rows(30, urn=_urn(i))
        if i == 1:
            rows[3][ARM] = "treat"
        write_extract(f"{_urn(i)}.csv", rows, folder=folder)
    extracts = tmp_path / folder
    (extracts / "notes.txt").write_text("not an extract")
    resources = {
        "settings": Settings(extracts_dir=str(extracts), out_dir=str(tmp_path / f"{folder}-out")),
        "warehouse_db": Warehouse(database=str(tmp_path / f"{folder}.duckdb")),
    }
    job = dg.Definitions(
        assets=[pupils], jobs=[dg.define_asset_job("load", selection="pupils")], resources=resources
    ).resolve_job_def("load")
    keys = sorted(files_by_school(extracts))
    instance.add_dynamic_partitions(SCHOOLS, [k for k in keys if k not in instance.get_dynamic_partitions(SCHOOLS)])
    result = job.execute_in_process(instance=instance, tags={RANGE_START: keys[0], RANGE_END: keys[-1]})
    assert result.success
    return result, keys


def _materializations(result) -> dict[str, dg.AssetObservation]:
    """Each school's figures: the observation the run logged for its partition (one per school)."""
    observed = result.asset_observations_for_node("pupils")
    assert len(observed) == len({o.partition for o in observed})
    assert {m.partition for m in result.asset_materializations_for_node("pupils")} == {o.partition for o in observed}
    return {o.partition: o for o in observed}


def _bytes_per_school(instance, result, n_schools: int) -> float:
    logs = instance.all_logs(result.run_id)
    return sum(len(dg.serialize_value(entry)) for entry in logs) / n_schools


@pytest.mark.slow
def test_each_partition_names_only_its_own_school_and_storage_is_linear(tmp_path, write_extract):
    with dg.instance_for_test() as instance:
        small, keys20 = _run(tmp_path, instance, 20, write_extract, "twenty")
        per_school_20 = _bytes_per_school(instance, small, 20)
    with dg.instance_for_test() as instance:
        large, keys60 = _run(tmp_path, instance, 60, write_extract, "sixty")
        per_school_60 = _bytes_per_school(instance, large, 60)
    # the event log per school does not grow with the number of schools (within 20%)
    assert per_school_60 <= per_school_20 * 1.2, (per_school_20, per_school_60)
    assert per_school_20 < 25_000
    events = _materializations(large)
    assert sorted(events) == keys60
    for school, event in events.items():
        text = dg.serialize_value(event)
        # whole numbers only: a URN's six digits also turn up inside timestamps and hashes by chance
        others = [k for k in keys60 if k != school and re.search(rf"(?<![0-9]){k}(?![0-9])", text)]
        assert others == [], f"partition {school} names other schools: {others[:3]}"
        assert event.metadata["school"].value == school
    one = events[_urn(1)].metadata
    assert one["status"].value == "loaded"
    assert (one["rows_read"].value, one["rows_loaded"].value, one["rows_quarantined"].value) == (30, 29, 1)
    assert "arm not 'intervention' or 'control': 1" in one["quarantined_by_reason"].value
    assert one["dagster/row_count"].value == 29
    assert "Reading" in one["trials"].value and f"{_urn(1)}-what-to-fix.csv" in one["what_to_fix"].value
    assert (tmp_path / "sixty-out").parent.joinpath("feedback", _urn(1), f"{_urn(1)}-what-to-fix.csv").exists()


def test_a_rejected_file_is_visibly_not_a_successful_load(tmp_path, write_extract):
    with dg.instance_for_test() as instance:
        _run(tmp_path, instance, 3, write_extract, "extracts")
        resent = pupil_rows(30, urn=_urn(2))
        for row in resent:
            row[ARM] = row[ARM][0].upper()  # every arm coded I/C: nothing loadable
        write_extract(f"{_urn(2)}.csv", resent)
        result, _ = _run_again(tmp_path, instance)
        events = _materializations(result)
        bad = events[_urn(2)].metadata
        assert bad["status"].value == "held"
        assert "held, not applied: it would replace 30 pupils by 0" in bad["files"].value
        assert "held, not applied: it would replace 30 pupils by 0" in bad["changes"].value
        assert "the earlier 30 pupils stay as they were" in bad["changes"].value
        assert bad["dagster/row_count"].value == 30  # the earlier rows survive
        assert events[_urn(0)].metadata["status"].value == "unchanged"


def _run_again(tmp_path, instance):
    extracts = tmp_path / "extracts"
    resources = {
        "settings": Settings(extracts_dir=str(extracts), out_dir=str(tmp_path / "extracts-out")),
        "warehouse_db": Warehouse(database=str(tmp_path / "extracts.duckdb")),
    }
    job = dg.Definitions(
        assets=[pupils], jobs=[dg.define_asset_job("load", selection="pupils")], resources=resources
    ).resolve_job_def("load")
    keys = sorted(files_by_school(extracts))
    result = job.execute_in_process(instance=instance, tags={RANGE_START: keys[0], RANGE_END: keys[-1]})
    assert result.success
    return result, keys


def test_school_status_words():
    from microtrials.ingest.loading import FileReport
    from pipelines.assets.loading import school_status

    ok = FileReport("a.csv", "loaded")
    held = FileReport("b.csv", "loaded", trials_rejected={"R / N": "why"})
    assert school_status([]) == "no file"
    assert school_status([ok]) == "loaded"
    assert school_status([held]) == "partly rejected"
    assert school_status([FileReport("c.csv", "rejected")]) == "rejected"
    assert school_status([ok, FileReport("d.csv", "held")]) == "held"
    assert school_status([FileReport("e.csv", "partly held")]) == "held"
    assert school_status([ok, FileReport("c.csv", "rejected")]) == "partly rejected"
    assert school_status([FileReport("a.csv", "unchanged")]) == "unchanged"


def test_a_run_under_another_key_stops_until_the_officer_says_new_key(tmp_path, write_extract, monkeypatch):
    with dg.instance_for_test() as instance:
        _run(tmp_path, instance, 2, write_extract, "extracts")
        monkeypatch.setenv("MICROTRIALS_PUPIL_KEY", "another-key-for-this-test-5d2c8e1f7a9b4630")
        extracts = tmp_path / "extracts"
        resources = {
            "settings": Settings(extracts_dir=str(extracts), out_dir=str(tmp_path / "extracts-out")),
            "warehouse_db": Warehouse(database=str(tmp_path / "extracts.duckdb")),
        }
        job = dg.Definitions(
            assets=[pupils], jobs=[dg.define_asset_job("load", selection="pupils")], resources=resources
        ).resolve_job_def("load")
        tags = {RANGE_START: _urn(0), RANGE_END: _urn(1)}
        failed = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
        assert not failed.success
        [failure] = [e for e in failed.all_events if e.is_step_failure]
        assert "not the key this warehouse was loaded with" in str(failure.step_failure_data.error)
        monkeypatch.setenv("MICROTRIALS_NEW_PUPIL_KEY", "1")
        assert job.execute_in_process(instance=instance, tags=tags).success
