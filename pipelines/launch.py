"""How runs start and end: the instance, school partitions, the officer's console, failures and dead runs."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

import dagster as dg

from microtrials.errors import MicrotrialsError

PID_TAG = "microtrials/pid"
HOST_TAG = "microtrials/host"
# Statuses of a run that has not ended: a run left in one of these by a process that is gone
# (kill -9, power cut) would otherwise look "in progress" for ever and keep its pool slots.
UNFINISHED = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING,
              dg.DagsterRunStatus.NOT_STARTED]
FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
#: In DAGSTER_HOME: held while a `microtrials run` opens the instance (see instance_lock).
INSTANCE_LOCK = ".microtrials-instance.lock"
#: The logger `microtrials run` configures for its run (see officer_console).
OFFICER_CONSOLE = "officer_console"
P = ParamSpec("P")
R = TypeVar("R")
DISK_FULL = ("no space left on device", "disk is full", "database or disk is full", "disk quota exceeded")


# ---- failures a user can meet ----------------------------------------------------------------

def one_line(text: str) -> str:
    return " ".join(str(text).split())


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the user's quota) is full: an OSError's errno ENOSPC/EDQUOT, or
    DuckDB's and SQLite's words for it."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc).lower()
    return any(f"[errno {code}]" in text for code in (errno.ENOSPC, errno.EDQUOT)) or any(w in text for w in DISK_FULL)


def failure_for(exc: BaseException) -> dg.Failure | None:
    """The ``dg.Failure`` an officer can act on for ``exc`` (a MicrotrialsError, a full disk, a file
    that cannot be read or written), else None (a fault in microtrials: its trace stays whole)."""
    if disk_full(exc):
        return dg.Failure(
            description=f"the disk is full ({one_line(exc)}): free some space on the disk holding the warehouse, "
            "the published folder and DAGSTER_HOME, then run again (nothing was half-written: the last good "
            "publication stays)",
            metadata={"kind": "disk full", "path": str(getattr(exc, "filename", "") or "")},
        )
    if isinstance(exc, MicrotrialsError):
        return dg.Failure(description=one_line(exc), metadata={"kind": "input or setup"})
    if isinstance(exc, OSError) and exc.filename:
        return dg.Failure(
            description=f"{exc.strerror or one_line(exc)}: {exc.filename}: check that the file or folder exists and "
            "that the account running microtrials may read and write it (ask IT), then run again",
            metadata={"kind": "file access", "path": str(exc.filename)},
        )
    return None


@contextlib.contextmanager
def officer_failures() -> Iterator[None]:
    """Inside an asset or check: errors an officer can act on leave the step as ``dg.Failure`` (description
    and metadata, shown in the UI and by `microtrials run`); anything else is left as it is."""
    try:
        yield
    except (dg.DagsterExecutionInterruptedError, KeyboardInterrupt):  # Ctrl-C or SIGTERM (Dagster's handler)
        _Stop.requested = True
        raise
    except dg.Failure:
        raise
    except Exception as exc:  # noqa: BLE001 - converted or re-raised unchanged
        failure = failure_for(exc)
        if failure is None:
            raise
        raise failure from exc


# ---- the console of `microtrials run` ----------------------------------------------------------

class OfficerConsoleFilter(logging.Filter):
    """Dagster's console lines as an officer needs them; every event stays whole in the run's log.

    A step that failed with a ``dg.Failure`` (a message written for the officer) shows its first line
    only, and `microtrials run` ends with the description. The "Dependencies for step ... Not
    executing" lines that follow any failure are dropped. Other errors (a bug) keep their trace.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        event = getattr(record, "dagster_event", None)  # Dagster puts the event on each record it logs
        message = record.getMessage()
        if record.levelno >= logging.ERROR and "Dependencies for step" in message and "Not executing" in message:
            return False
        if isinstance(event, dg.DagsterEvent) and "\n" in message and _officer_failure(event):
            record.msg, record.args = message.split("\n", 1)[0] + " (the reason is below; details in the Dagster UI)", ()
        return True


def _officer_failure(event: dg.DagsterEvent) -> bool:
    """Whether ``event`` is a step failure raised as ``dg.Failure``, or a run failure whose first failed step was."""
    if event.is_run_failure:
        event = event.job_failure_data.first_step_failure_event
    return event is not None and event.is_step_failure and event.step_failure_data.user_failure_data is not None


@dg.logger(
    {"log_level": dg.Field(str, is_required=False, default_value="INFO")},
    description="The terminal of `microtrials run`: Dagster's lines at log_level and above, failures an "
    "officer can act on in one line (the whole event stays in the run's log).",
)
def officer_console(init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = logging.Logger("microtrials", level=init_context.logger_config["log_level"])
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s - %(levelname)s - %(message)s"))
    handler.addFilter(OfficerConsoleFilter())
    logger.addHandler(handler)
    return logger


LOGGERS = {"console": dg.colored_console_logger, OFFICER_CONSOLE: officer_console}
RUN_CONFIG = {"loggers": {OFFICER_CONSOLE: {"config": {"log_level": "INFO"}}}}


# ---- Dagster settings for many partitions ------------------------------------------------------

# Dagster's documented environment settings for runs over many school partitions, set by `microtrials
# run` and `microtrials ui` (the daemon and the runs it starts inherit them) unless already set:
# - one "planned" event per asset for a run over many partitions instead of one per school (with
#   SQLite each event is a commit; Dagster's trade-off: if such a run fails as a whole, its
#   partitions are not each marked failed; the run is, and each school's status is in its observation);
# - a run's materialization events for many partitions written in batches of up to 1,000 (one
#   INSERT in PostgreSQL instead of one per school; SQLite still writes them one by one).
DAGSTER_SETTINGS = {"DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "1", "DAGSTER_EVENT_BATCH_SIZE": "1000"}


def use_dagster_settings() -> None:
    """Set :data:`DAGSTER_SETTINGS` in this process's environment where they are not set already."""
    for name, value in DAGSTER_SETTINGS.items():
        os.environ.setdefault(name, value)


# ---- opening the instance ---------------------------------------------------------------------

@contextlib.contextmanager
def instance_lock(home: Path, timeout_s: float = 120.0) -> Iterator[None]:
    """Hold an exclusive lock on ``DAGSTER_HOME/.microtrials-instance.lock`` (fcntl; a no-op where there is none).

    Two runs starting at once on a fresh DAGSTER_HOME would both create the instance's SQLite
    tables and one would die with "table ... already exists"; they take turns instead (for a
    second or so; the runs themselves still run side by side). After ``timeout_s`` the run goes
    on without the lock rather than wait for ever.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    handle = open(home / INSTANCE_LOCK, "a")
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        yield
    finally:
        handle.close()  # releases the lock


def open_instance(home: Path) -> dg.DagsterInstance:
    """The Dagster instance of DAGSTER_HOME ``home``, its storage created (tables and all) under :func:`instance_lock`."""
    with instance_lock(home):
        instance = dg.DagsterInstance.get()
        try:  # touch the run, event-log and schedule storage: each creates its tables now
            instance.get_runs(limit=1)
            instance.all_instigator_state()
            instance.event_log_storage.get_maximum_record_id()
        except BaseException:
            instance.dispose()
            raise
    return instance


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


# ---- starting a run ------------------------------------------------------------------------------

def register_schools(instance: dg.DagsterInstance, extracts: Path) -> list[str]:
    """Add a school partition for every school with a file in ``extracts``; every registered school, in
    partition order (a school whose file has gone loads nothing and keeps its rows)."""
    from pipelines.partitions import SCHOOLS, files_by_school

    registered = list(instance.get_dynamic_partitions(SCHOOLS))
    known = set(registered)
    new = [key for key in sorted(files_by_school(extracts)) if key not in known]
    if new:
        instance.add_dynamic_partitions(SCHOOLS, new)
        return registered + new
    return registered


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended, for the terminal."""

    run_id: str
    success: bool
    published: bool
    interrupted: bool
    reason: str  # why it failed, on one line ('' when it succeeded)
    unreported: tuple[str, ...] = ()  # runs that ended unsuccessfully since the last successful one (unreported_runs)


class _Stop:
    """Whether SIGTERM or SIGINT asked `microtrials run` to stop (set by the handler; see stop_on_signals)."""

    requested = False


def stop_on_signals() -> None:
    """SIGTERM stops a run as Ctrl-C does: the step is interrupted, its transaction rolled back, the run marked
    failed. (While a run executes, Dagster's own handler takes both signals and interrupts the step.)"""

    def interrupt(signum, frame):
        _Stop.requested = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)


def run_everything(extracts: Path, home: Path) -> RunOutcome:
    """One in-process Dagster run of every school (``load_and_refresh``), or the refresh alone when no school is
    registered, on the persistent instance of DAGSTER_HOME ``home``. Runs an earlier `microtrials run` left
    unfinished are marked failed first (printed as notes). KeyboardInterrupt propagates when stopped outside a step."""
    from pipelines.definitions import defs
    from pipelines.jobs import partition_range_tags

    instance = open_instance(home)
    try:
        with instance_lock(home):  # two runs registering the same new schools at once take turns too
            for run_id in recover_dead_runs(instance):
                print(f"note: run {run_id} had been left unfinished by a process that is gone; marked failed",
                      file=sys.stderr)
            every = register_schools(instance, extracts)
        if every:
            job, tags = defs.resolve_job_def("load_and_refresh"), partition_range_tags(every[0], every[-1])
        else:
            job, tags = defs.resolve_job_def("refresh"), {}
        result = job.execute_in_process(instance=instance, tags=tags | process_tags(), raise_on_error=False,
                                        run_config=RUN_CONFIG)
        ended = outcome(result)
        return dataclasses.replace(ended, unreported=unreported_runs(instance, result.run_id)) if ended.success else ended
    finally:
        instance.dispose()


# ---- how it ended --------------------------------------------------------------------------------

def unreported_runs(instance: dg.DagsterInstance, run_id: str) -> tuple[str, ...]:
    """The runs (any job, whoever started them) that ended failed or canceled after the latest successful
    run before ``run_id``, oldest first: a run killed, stopped or failed after its load committed told
    no summary of what it changed, so run ``run_id``'s summary tells it (cli.summary). Once ``run_id``
    has succeeded, the next run's summary no longer counts them."""
    before = [r for r in instance.get_run_records(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS]),
                                                  limit=2) if r.dagster_run.run_id != run_id]
    since = before[0].create_timestamp if before else None
    ended = instance.get_run_records(filters=dg.RunsFilter(
        statuses=[dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED], created_after=since))
    return tuple(r.dagster_run.run_id for r in sorted(ended, key=lambda r: r.create_timestamp)
                 if r.dagster_run.run_id != run_id)


def outcome(result: dg.ExecuteInProcessResult) -> RunOutcome:
    """What the terminal needs to know of a finished run."""
    stopped = _Stop.requested or any(
        e.event_type == dg.DagsterEventType.RUN_CANCELED
        or (e.is_step_failure and getattr(e.step_failure_data.error_source, "value", "") == "INTERRUPT")
        for e in result.all_events)
    return RunOutcome(run_id=result.run_id, success=result.success, published=published(result),
                      interrupted=stopped, reason="" if result.success else failure_reason(result))


def failure_reason(result: dg.ExecuteInProcessResult) -> str:
    """Why the run failed, on one line: the failed blocking checks, else the first failed step's ``dg.Failure``
    description, else its error (a fault in microtrials: the trace is in the run's log)."""
    failed = failed_blocking_checks(result)
    if failed:
        return f"blocking check failed (README \"For officers\" says what to do): {failed}"
    for event in result.all_events:
        if not event.is_step_failure:
            continue
        data = event.step_failure_data
        if data.user_failure_data is not None and data.user_failure_data.description:
            return f"{event.step_key}: {one_line(data.user_failure_data.description)}"
        if data.error is not None:
            error = data.error.cause or data.error
            return (f"{event.step_key}: {one_line(error.message)} (a fault in microtrials, not in your files: the "
                    f"whole trace is in the Dagster UI, run {result.run_id}; please report it)")
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.RUN_FAILURE and event.message:
            return one_line(event.message)
    return "the run did not succeed (see the Dagster UI)"


def failed_blocking_checks(result: dg.ExecuteInProcessResult) -> str:
    """Failed ERROR-severity checks of the run as 'asset:check (description); ...'."""
    failed = []
    for evaluation in result.get_asset_check_evaluations():
        if not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR:
            key = evaluation.asset_check_key
            failed.append(f"{key.asset_key.to_user_string()}:{key.name} ({one_line(evaluation.description or 'failed')})")
    return "; ".join(failed)


def published(result: dg.ExecuteInProcessResult) -> bool:
    """Whether this run republished the evidence table."""
    return any(e.asset_key == dg.AssetKey("evidence_table") for e in result.get_asset_materialization_events())


def officer_step(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorator for an asset's or check's function (beneath ``@dg.asset``): its body runs inside
    :func:`officer_failures`. Dagster sees the same parameters (``functools.wraps``)."""

    @functools.wraps(fn)
    def step(*args: P.args, **kwargs: P.kwargs) -> R:
        with officer_failures():
            return fn(*args, **kwargs)

    return step
