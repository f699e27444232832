"""The whole pipeline run in the test's own process on a given instance, folders and warehouse."""

from __future__ import annotations

from pathlib import Path

import dagster as dg


def run_in_process(defs: dg.Definitions, extracts: Path, out: Path, db: Path,
                   instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    """`load_and_refresh` over every school of ``extracts`` in this process, as `microtrials run` does."""
    from pipelines.jobs import partition_range_tags
    from pipelines.partitions import SCHOOLS, files_by_school
    from pipelines.resources import Settings, Warehouse

    schools = sorted(files_by_school(extracts))
    known = set(instance.get_dynamic_partitions(SCHOOLS))
    instance.add_dynamic_partitions(SCHOOLS, [s for s in schools if s not in known])
    every = sorted(instance.get_dynamic_partitions(SCHOOLS))
    job_defs = dg.Definitions(
        assets=list(defs.assets), asset_checks=list(defs.asset_checks or []), jobs=list(defs.jobs),
        resources={"settings": Settings(extracts_dir=str(extracts), out_dir=str(out)),
                   "warehouse_db": Warehouse(database=str(db))},
    )
    job = job_defs.resolve_job_def("load_and_refresh")
    return job.execute_in_process(instance=instance, tags=partition_range_tags(every[0], every[-1]),
                                  raise_on_error=False)
