"""The extracts sensor: a new or changed school file adds its school's partition and loads it, then refreshes.

The cursor is JSON ``{file name: {"sha256": content hash, "school": partition key}}`` for the
files seen in the extracts folder. On each tick:

- a file whose name is new, or whose content hash changed, marks its school as changed (a file
  whose bytes are unchanged is never reloaded, whatever its modification time says);
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
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from pipelines.jobs import load_and_refresh
from pipelines.partitions import SCHOOLS, content_hash, extract_files, school_key
from pipelines.resources import Settings

SENSOR_INTERVAL_SECONDS = int(os.environ.get("MICROTRIALS_SENSOR_INTERVAL", "15"))


def read_cursor(cursor: str | None) -> dict[str, dict[str, str]]:
    """The files seen before, from the sensor's cursor (empty when there is none or it is unreadable)."""
    try:
        seen = json.loads(cursor) if cursor else {}
    except ValueError:
        return {}
    return seen if isinstance(seen, dict) else {}


def scan(folder: Path, seen: dict[str, dict[str, str]]) -> tuple[dict[str, dict[str, str]], list[str], list[str]]:
    """(files now, changed school keys in first-seen order, names of files that disappeared).

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
        school = school_key(path)
        now[path.name] = {"sha256": sha, "school": school}
        if school not in changed:
            changed.append(school)
    deleted = sorted(set(seen) - set(now))
    return now, changed, deleted


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
    return dg.RunRequest(
        tags=label | {ASSET_PARTITION_RANGE_START_TAG: schools[0], ASSET_PARTITION_RANGE_END_TAG: schools[-1]}
    )


@dg.sensor(
    name="extracts_sensor",
    target=load_and_refresh,
    minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches the extracts folder (MICROTRIALS_EXTRACTS): a new or changed file (by name and "
    "sha256) registers its school's partition and runs load_and_refresh for it.",
)
def extracts_sensor(context: dg.SensorEvaluationContext, settings: Settings) -> dg.SensorResult:
    seen = read_cursor(context.cursor)
    now, changed, deleted = scan(settings.extracts, seen)
    for name in deleted:
        context.log.info(f"{name} left the extracts folder; the rows it loaded stay in the warehouse")
    cursor = json.dumps(now, sort_keys=True)
    if not changed:
        return dg.SensorResult(skip_reason="no new or changed extract files", cursor=cursor)
    registered = list(context.instance.get_dynamic_partitions(SCHOOLS))
    new = [key for key in sorted(changed) if key not in set(registered)]
    blocks = run_blocks(changed, registered + new)
    context.log.info(f"changed schools: {', '.join(changed)} (new: {', '.join(new) or 'none'})")
    return dg.SensorResult(
        run_requests=[load_request(block) for block in blocks],
        dynamic_partitions_requests=[schools_request(new)] if new else [],
        cursor=cursor,
    )


def schools_request(keys: list[str]) -> dg.AddDynamicPartitionsRequest:
    return dg.AddDynamicPartitionsRequest(partitions_def_name=SCHOOLS, partition_keys=keys)


ALL_SENSORS = [extracts_sensor]
