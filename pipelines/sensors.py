"""The extracts sensor: a new or changed school file adds its school's partition and loads it, then refreshes.

What is done is decided from the warehouse, never from the cursor: on each tick every file in the
extracts folder whose name and content hash the ``deliveries`` table does not record (loaded or
rejected) is *pending*: a new or changed file, and also one whose run died before its load
committed (``kill -9``, a power cut), which a cursor alone would have marked as done for good. The
cursor, JSON ``{file name: {"sha256": content hash, "school": partition key}}``, only saves looking
up a file's school again and notices files that left. On each tick:

- a pending file's school is loaded, unless a ``load_and_refresh`` run covering that school is
  queued or running; a started run whose process is gone (its "Started process for run (pid: N)"
  event names a pid no longer alive) is marked failed first, since Dagster's run monitoring cannot
  see a dead run worker of the default run launcher; a file loaded by another run (``microtrials
  run`` before the UI was started) is not pending, so the first tick has nothing to do;
- runs are tagged with a digest of the files they are to load (``microtrials/pending``): after
  :data:`MAX_ATTEMPTS` ended runs that did not record the same files, they are no longer retried (a
  warning says so) until the file changes or ``microtrials run`` loads it;
- schools not yet registered are added to the ``schools`` dynamic partitions;
- pending schools are loaded by the ``load_and_refresh`` job, which also refits every trial and
  republishes: one run when the changed schools are adjacent in the partition order (always the
  case for schools delivered for the first time together), else one run per school (the last
  refresh to run sees every load, because the warehouse pool runs one writer at a time);
- a file that disappeared is dropped from the cursor and nothing else happens: its school's rows
  stay in the warehouse and its partition keeps its load history (README "For officers").
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd

from microtrials.ingest import warehouse
from pipelines.jobs import PARTITION_RANGE_END, PARTITION_RANGE_START, load_and_refresh, partition_range_tags
from pipelines.partitions import SCHOOLS, content_hash, extract_files, school_key
from pipelines.resources import Settings, Warehouse
from pipelines.launch import process_alive

SENSOR_INTERVAL_SECONDS = int(os.environ.get("MICROTRIALS_SENSOR_INTERVAL", "15"))
PENDING_TAG = "microtrials/pending"  # pending_digest of the files a sensor run is to load
PARTITION_TAG = "dagster/partition"
#: Runs that ended (failed, or succeeded without recording the file) before a file is no longer retried.
MAX_ATTEMPTS = 3
ACTIVE = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
          dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
ENDED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]


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

    Opens the warehouse read-only; none before the warehouse exists, and none in a warehouse no
    writing connection of this version has opened yet (without the ``latest_deliveries`` view of
    ``sql/schema.sql``, which a read-only connection cannot create): its files then go to a run,
    which brings the warehouse up to date and finds the files it already holds ``unchanged``.
    Raises :class:`WarehouseBusy` while a run holds the write lock.
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
        if not warehouse.table_exists(con, "latest_deliveries"):
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


def load_request(schools: list[str], digest: str = "") -> dg.RunRequest:
    """A run of load_and_refresh for one school, or for a range of adjacent schools; ``digest``
    (:func:`pending_digest`) tags it with the files it is to load, so retries can be counted."""
    label = {"microtrials/schools": ", ".join(schools)[:200]} | ({PENDING_TAG: digest} if digest else {})
    if len(schools) == 1:
        return dg.RunRequest(partition_key=schools[0], tags=label)
    return dg.RunRequest(tags=label | partition_range_tags(schools[0], schools[-1]))


def pending_files(now: dict[str, dict[str, str]], done: set[str], changed: list[str]) -> list[str]:
    """Files in the folder whose content the warehouse's `deliveries` does not record (not loaded,
    not rejected): new or changed ones, and ones whose load never finished. A file that cannot be
    hashed (unreadable) counts only when it is new or changed: its load records it under another id."""
    return [name for name, seen in now.items() if name not in done and (seen.get("sha256") or name in changed)]


def pending_digest(names: list[str], now: dict[str, dict[str, str]]) -> str:
    """A short id of one block's pending files and contents: runs retrying the same files share it."""
    text = "\n".join(f"{name}\t{now[name].get('sha256', '')}" for name in sorted(names))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def run_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid of the process executing a run launched by the daemon: the run worker records it in
    its "Started process for run (pid: N)" engine event. None before that (queued, starting)."""
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        event = record.dagster_event
        data = event.engine_event_data if event is not None else None
        pid = data.metadata.get("pid") if data is not None and data.metadata else None
        text = str(getattr(pid, "value", pid) or "")
        if text.isdigit():
            return int(text)
    return None


def schools_in_flight(instance: dg.DagsterInstance, order: list[str]) -> set[str]:
    """Schools a load_and_refresh run that has not ended will load. A started run whose process is
    gone (killed, the machine stopped) is marked failed first (Dagster's run monitoring cannot see a
    dead run worker of the default launcher), so its files are requested again."""
    position = {key: i for i, key in enumerate(order)}
    covered: set[str] = set()
    # A launcher that runs workers elsewhere (Kubernetes, ECS, Docker) has its dead workers found by
    # Dagster's run monitoring; a pid is only meaningful for the default launcher, on this machine.
    local = not getattr(instance.run_launcher, "supports_check_run_worker_health", False)
    for run in instance.get_runs(filters=dg.RunsFilter(job_name=load_and_refresh.name, statuses=ACTIVE)):
        if local and run.status == dg.DagsterRunStatus.STARTED:
            pid = run_pid(instance, run.run_id)
            if pid is not None and pid != os.getpid() and not process_alive(pid):
                instance.report_run_failed(run, message=f"the process running it (pid {pid}) is gone; marked failed "
                                           "by the extracts sensor, which requests its files again")
                continue
        if run.tags.get(PARTITION_TAG):
            covered.add(run.tags[PARTITION_TAG])
        elif run.tags.get(PARTITION_RANGE_START) in position and run.tags.get(PARTITION_RANGE_END) in position:
            first, last = position[run.tags[PARTITION_RANGE_START]], position[run.tags[PARTITION_RANGE_END]]
            covered.update(order[first:last + 1])
        else:
            covered.update(order)  # a run over every school
    return covered


def attempts(instance: dg.DagsterInstance, digest: str) -> int:
    """Finished runs that tried to load exactly these files (same names, same contents)."""
    return instance.get_runs_count(filters=dg.RunsFilter(tags={PENDING_TAG: digest}, statuses=ENDED))


@dg.sensor(
    name="extracts_sensor",
    target=load_and_refresh,
    minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches the extracts folder (MICROTRIALS_EXTRACTS): a file the warehouse's deliveries do not "
    "record (new, changed, or one whose load never finished) registers its school's partition and runs "
    "load_and_refresh for it.",
)
def extracts_sensor(
    context: dg.SensorEvaluationContext, settings: Settings, warehouse_db: Warehouse
) -> dg.SensorResult:
    seen = read_cursor(context.cursor)
    now, changed_files, deleted = scan(settings.extracts, seen)
    for name in deleted:
        context.log.info(f"{name} left the extracts folder; the rows it loaded stay in the warehouse")
    try:
        done = recorded_files(warehouse_db.db_path, {name: now[name]["sha256"] for name in now if now[name]["sha256"]})
    except WarehouseBusy:
        # The cursor stays as it was, so the next tick looks at the same files again.
        return dg.SensorResult(skip_reason="the warehouse is busy (a run is writing it); looking again next tick")
    cursor = json.dumps(now, sort_keys=True)
    registered = list(context.instance.get_dynamic_partitions(SCHOOLS))
    new = sorted({now[name]["school"] for name in changed_files} - set(registered))
    partitions = [schools_request(new)] if new else []
    pending = pending_files(now, done, changed_files)
    flying = schools_in_flight(context.instance, registered + new) if pending else set()
    waiting = [name for name in pending if now[name]["school"] in flying]
    files_of: dict[str, list[str]] = {}
    for name in pending:
        if now[name]["school"] not in flying:
            files_of.setdefault(now[name]["school"], []).append(name)
    requests, given_up = [], []
    for block in run_blocks(list(files_of), registered + new):
        names = [name for school in block for name in files_of[school]]
        digest = pending_digest(names, now)
        if attempts(context.instance, digest) >= MAX_ATTEMPTS:
            given_up += names
            continue
        requests.append(load_request(block, digest))
    if given_up:
        context.log.warning(f"{', '.join(sorted(given_up))}: {MAX_ATTEMPTS} runs ended without loading or rejecting "
                            "them; see those runs in the UI, then save the file again (or run microtrials run) to retry")
    if not requests:
        reason = "no new or changed extract files"
        loaded_elsewhere = [name for name in changed_files if name in done]
        if loaded_elsewhere:
            reason += f" ({len(loaded_elsewhere)} file(s) already loaded by another run)"
        if waiting:
            reason = f"{len(waiting)} file(s) waiting for a run that is already queued or running"
        elif given_up:
            reason = f"{len(given_up)} file(s) not retried after {MAX_ATTEMPTS} runs that did not load them"
        return dg.SensorResult(skip_reason=reason, cursor=cursor, dynamic_partitions_requests=partitions)
    context.log.info(f"schools to load: {', '.join(r.tags['microtrials/schools'] for r in requests)} "
                     f"(new: {', '.join(new) or 'none'})")
    return dg.SensorResult(run_requests=requests, dynamic_partitions_requests=partitions, cursor=cursor)


def schools_request(keys: list[str]) -> dg.AddDynamicPartitionsRequest:
    return dg.AddDynamicPartitionsRequest(partitions_def_name=SCHOOLS, partition_keys=keys)


ALL_SENSORS = [extracts_sensor]
