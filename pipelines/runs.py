"""Runs started by `microtrials run`: tags naming their process, recovery of runs whose process died, and why a run failed."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

PID_TAG = "microtrials/pid"
HOST_TAG = "microtrials/host"
# Statuses of a run that has not ended: a run left in one of these by a process that is gone
# (kill -9, power cut) would otherwise look "in progress" for ever and keep its pool slots.
UNFINISHED = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING,
              dg.DagsterRunStatus.NOT_STARTED]
FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]


def process_tags() -> dict[str, str]:
    """Tags that say which process on which machine executes the run (in-process runs have no launcher)."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live `microtrials` (or Python) process on this machine, not a reused pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True  # no /proc (not Linux): trust kill(0)
    return state != "Z" and (b"microtrials" in cmdline or b"python" in cmdline)


def recover_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark as failed the unfinished runs started by `microtrials run` on this machine whose process is
    gone, and free the pool slots held by any run that has ended; the ids of the runs marked failed.

    Runs launched by the daemon (sensor, schedules, the UI) are watched by Dagster's run monitoring
    (`run_monitoring` in dagster.yaml) instead.
    """
    host = socket.gethostname()
    dead = []
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=UNFINISHED, tags={HOST_TAG: host})):
        run = record.dagster_run
        pid = run.tags.get(PID_TAG, "")
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            instance.report_run_failed(
                run, message=f"the process running it (pid {pid}) is gone (killed or the machine stopped); "
                "marked failed by the next `microtrials run`"
            )
            dead.append(run.run_id)
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        holders = storage.get_concurrency_run_ids()
        if holders:
            ended = instance.get_run_records(filters=dg.RunsFilter(run_ids=list(holders), statuses=FINISHED))
            for record in ended:
                storage.free_concurrency_slots_for_run(record.dagster_run.run_id)
    return dead


# "microtrials.errors.MicrotrialsError: " before a message written for the officer: not for the officer.
_ERROR_CLASS = re.compile(r"^(?:[\w.]+\.)?MicrotrialsError: ")


@contextlib.contextmanager
def partitions_fixed_for_the_run(instance: dg.DagsterInstance, name: str) -> Iterator[None]:
    """While one run executes in this process, answer the instance's questions about the dynamic
    partitions ``name`` from one read taken when the run starts.

    Dagster checks every ``context.add_asset_metadata(..., partition_key=...)`` against the run's
    partition range by listing every partition from storage: at 20,000 schools that is 20,000
    listings of 20,000 keys (minutes). A run's partitions are fixed when it starts; a partition
    another process adds meanwhile is outside this run's range anyway. Adding or deleting
    partitions through this instance refreshes the read. Restored when the run ends.
    """
    real_get, real_has = instance.get_dynamic_partitions, instance.has_dynamic_partition
    real_add, real_delete = instance.add_dynamic_partitions, instance.delete_dynamic_partition
    cache: dict[str, tuple[list[str], set[str]]] = {}

    def read(partitions_def_name: str) -> tuple[list[str], set[str]]:
        if partitions_def_name not in cache:
            keys = list(real_get(partitions_def_name))
            cache[partitions_def_name] = (keys, set(keys))
        return cache[partitions_def_name]

    def get_dynamic_partitions(partitions_def_name: str) -> list[str]:
        return list(read(partitions_def_name)[0]) if partitions_def_name == name else real_get(partitions_def_name)

    def has_dynamic_partition(partitions_def_name: str, partition_key: str) -> bool:
        if partitions_def_name != name:
            return real_has(partitions_def_name, partition_key)
        return partition_key in read(partitions_def_name)[1]

    def add_dynamic_partitions(partitions_def_name: str, partition_keys):
        cache.pop(partitions_def_name, None)
        return real_add(partitions_def_name, partition_keys)

    def delete_dynamic_partition(partitions_def_name: str, partition_key: str):
        cache.pop(partitions_def_name, None)
        return real_delete(partitions_def_name, partition_key)

    replaced = {"get_dynamic_partitions": get_dynamic_partitions, "has_dynamic_partition": has_dynamic_partition,
                "add_dynamic_partitions": add_dynamic_partitions, "delete_dynamic_partition": delete_dynamic_partition}
    before = {attr: instance.__dict__[attr] for attr in replaced if attr in instance.__dict__}
    for attr, function in replaced.items():
        setattr(instance, attr, function)
    try:
        yield
    finally:
        for attr in replaced:
            if attr in before:
                setattr(instance, attr, before[attr])
            else:
                instance.__dict__.pop(attr, None)


DISK_FULL = ("no space left on device", "disk is full", "database or disk is full", "disk quota exceeded")


def is_disk_full(text: str) -> bool:
    """Whether an error's text says the disk (or the user's quota) is full: OSError ENOSPC/EDQUOT,
    DuckDB's and SQLite's own words for it."""
    lowered = text.lower()
    return (f"[errno {errno.ENOSPC}]" in lowered or f"[errno {errno.EDQUOT}]" in lowered
            or any(s in lowered for s in DISK_FULL))


def plain_error(cls_name: str, message: str) -> str:
    """An error's message in one line (without the MicrotrialsError class name), with what to do for the
    errors an officer can meet (a full disk)."""
    text = _ERROR_CLASS.sub("", " ".join(message.split()), count=1)
    if is_disk_full(text):
        return (f"the disk is full ({text}): free some space on the disk holding the warehouse, the published "
                "folder and DAGSTER_HOME, then run again (nothing was half-written: the last good publication stays)")
    return text


def failure_reason(result: dg.ExecuteInProcessResult) -> str:
    """Why the run failed, on one line: the failed blocking checks, else the first step's error."""
    failed = failed_blocking_checks(result)
    if failed:
        return f"blocking check failed (README \"For officers\" says what to do): {failed}"
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data.error is not None:
            error = event.step_failure_data.error
            while error.cause is not None and "MicrotrialsError" not in error.cls_name:
                if "OSError" in error.cls_name or "IOException" in error.cls_name:
                    break
                error = error.cause
            return f"{event.step_key}: " + plain_error(error.cls_name, error.message)
    for event in result.all_events:
        if event.event_type_value == "RUN_FAILURE" and event.message:
            return " ".join(event.message.split())
    return "the run did not succeed (see the Dagster UI)"


def failed_blocking_checks(result: dg.ExecuteInProcessResult) -> str:
    """Failed ERROR-severity checks of the run as 'asset:check (description); ...'."""
    failed = []
    for evaluation in result.get_asset_check_evaluations():
        if not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR:
            key = evaluation.asset_check_key
            text = " ".join((evaluation.description or "failed").split())
            failed.append(f"{key.asset_key.to_user_string()}:{key.name} ({text})")
    return "; ".join(failed)


def interrupted(result: dg.ExecuteInProcessResult) -> bool:
    """Whether the run ended because it was interrupted (SIGINT / SIGTERM, which Dagster turns into an interrupt)."""
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data.error is not None:
            error = event.step_failure_data.error
            while error is not None:
                if "Interrupt" in error.cls_name:
                    return True
                error = error.cause
        if event.event_type_value == "RUN_FAILURE" and "interrupt" in (event.message or "").lower():
            return True
    return False


def published(result: dg.ExecuteInProcessResult) -> bool:
    """Whether this run republished the evidence table."""
    return any(e.asset_key == dg.AssetKey("evidence_table") for e in result.get_asset_materialization_events())
