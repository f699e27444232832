"""The extracts sensor: a new or changed school file adds its school's partition and loads it, then refreshes.

The cursor is JSON ``{file name: {"sha256": content hash, "school": partition key}}`` for the
files seen in the extracts folder. On each tick:

- a file whose name is new, or whose content hash changed, marks its school as changed (a file
  whose bytes are unchanged is never reloaded, whatever its modification time says), unless the
  warehouse's ``deliveries`` table already records that file name with that content: then it was
  loaded (or rejected) by another run, e.g. ``microtrials run`` before the UI was started, and the
  first tick has nothing to do;
- schools not yet registered are added to the ``schools`` dynamic partitions;
- changed schools are loaded by the ``load_and_refresh`` job, which also refits every trial and
  republishes: one run when the changed schools are adjacent in the partition order (always the
  case for schools delivered for the first time together), else one run per school (the last
  refresh to run sees every load, because the warehouse pool runs one writer at a time);
- a file that disappeared is dropped from the cursor and nothing else happens: its school's rows
  stay in the warehouse and its partition keeps its load history (README "For officers").
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd

from microtrials import warehouse
from pipelines.jobs import load_and_refresh, partition_range_tags
from pipelines.partitions import SCHOOLS, content_hash, extract_files, school_key
from pipelines.resources import Settings, Warehouse

SENSOR_INTERVAL_SECONDS = int(os.environ.get("MICROTRIALS_SENSOR_INTERVAL", "15"))


def read_cursor(cursor: str | None) -> dict[str, dict[str, str]]:
    """The files seen before, from the sensor's cursor (empty when there is none or it is unreadable)."""
    try:
        seen = json.loads(cursor) if cursor else {}
    except ValueError:
        return {}
    return seen if isinstance(seen, dict) else {}


def scan(folder: Path, seen: dict[str, dict[str, str]]) -> tuple[dict[str, dict[str, str]], list[str], list[str]]:
    """(files now, names of files new or changed since ``seen``, names of files that disappeared).

    The school of a file is looked up again only when its name or content is new.
    """
    now: dict[str, dict[str, str]] = {}
    changed: list[str] = []
    for path in extract_files(folder):
        sha = content_hash(path)
        before = seen.get(path.name)
        if before is not None and before.get("sha256") == sha and before.get("school"):
            now[path.name] = before
            continue
        now[path.name] = {"sha256": sha, "school": school_key(path)}
        changed.append(path.name)
    deleted = sorted(set(seen) - set(now))
    return now, changed, deleted


class WarehouseBusy(Exception):
    """Another process holds the warehouse's write lock (a run is loading)."""


def recorded_files(db_path: str, files: dict[str, str]) -> set[str]:
    """The names among ``files`` ({file name: sha256}) that `deliveries` records with that content.

    Opens the warehouse read-only; none before the warehouse exists. Raises :class:`WarehouseBusy`
    while a run holds the write lock.
    """
    if not files or not Path(db_path).is_file():
        return set()
    try:
        con = warehouse.connect(db_path, read_only=True)
    except duckdb.IOException as exc:
        if warehouse.is_lock_error(exc):
            raise WarehouseBusy(str(exc)) from exc
        raise
    try:
        if not warehouse.table_exists(con, "deliveries"):
            return set()
        frame = pd.DataFrame({"file_name": list(files), "delivery_id": list(files.values())})
        con.register("files_now", frame)
        return {row[0] for row in con.execute(warehouse.sql("recorded_files")).fetchall()}
    finally:
        con.close()


def run_blocks(changed: list[str], order: list[str]) -> list[list[str]]:
    """Changed schools grouped into runs: maximal runs of keys adjacent in ``order`` (the partition order)."""
    position = {key: i for i, key in enumerate(order)}
    keys = sorted(changed, key=lambda k: position[k])
    blocks: list[list[str]] = []
    for key in keys:
        if blocks and position[key] == position[blocks[-1][-1]] + 1:
            blocks[-1].append(key)
        else:
            blocks.append([key])
    return blocks


def load_request(schools: list[str]) -> dg.RunRequest:
    """A run of load_and_refresh for one school, or for a range of adjacent schools."""
    label = {"microtrials/schools": ", ".join(schools)[:200]}
    if len(schools) == 1:
        return dg.RunRequest(partition_key=schools[0], tags=label)
    return dg.RunRequest(tags=label | partition_range_tags(schools[0], schools[-1]))


@dg.sensor(
    name="extracts_sensor",
    target=load_and_refresh,
    minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches the extracts folder (MICROTRIALS_EXTRACTS): a new or changed file (by name and "
    "sha256) registers its school's partition and runs load_and_refresh for it.",
)
def extracts_sensor(
    context: dg.SensorEvaluationContext, settings: Settings, warehouse_db: Warehouse
) -> dg.SensorResult:
    seen = read_cursor(context.cursor)
    now, changed_files, deleted = scan(settings.extracts, seen)
    for name in deleted:
        context.log.info(f"{name} left the extracts folder; the rows it loaded stay in the warehouse")
    try:
        done = recorded_files(warehouse_db.db_path, {name: now[name]["sha256"] for name in changed_files})
    except WarehouseBusy:
        # The cursor stays as it was, so the next tick looks at the same files again.
        return dg.SensorResult(skip_reason="the warehouse is busy (a run is writing it); looking again next tick")
    cursor = json.dumps(now, sort_keys=True)
    registered = list(context.instance.get_dynamic_partitions(SCHOOLS))
    changed = list(dict.fromkeys(now[name]["school"] for name in changed_files if name not in done))
    # Schools of files another run already loaded still get their partition, but no run.
    new = sorted({now[name]["school"] for name in changed_files} - set(registered))
    partitions = [schools_request(new)] if new else []
    if not changed:
        reason = "no new or changed extract files"
        if done:
            reason += f" ({len(done)} file(s) already loaded by another run)"
        return dg.SensorResult(skip_reason=reason, cursor=cursor, dynamic_partitions_requests=partitions)
    blocks = run_blocks(changed, registered + new)
    context.log.info(f"changed schools: {', '.join(changed)} (new: {', '.join(new) or 'none'})")
    return dg.SensorResult(
        run_requests=[load_request(block) for block in blocks],
        dynamic_partitions_requests=partitions,
        cursor=cursor,
    )


def schools_request(keys: list[str]) -> dg.AddDynamicPartitionsRequest:
    return dg.AddDynamicPartitionsRequest(partitions_def_name=SCHOOLS, partition_keys=keys)


ALL_SENSORS = [extracts_sensor]
