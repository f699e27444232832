"""The `microtrials` command: run the pipeline, open the Dagster UI, preview the publication."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# The terminal shows Dagster's INFO lines and above; every DEBUG event is still in the run's log in the UI.
QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="microtrials", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="load the extracts, fit the models, publish the evidence table")
    run.add_argument("--extracts", type=Path, default=REPO_ROOT / "data" / "extracts")
    run.add_argument("--out", type=Path, default=REPO_ROOT / "data" / "published")
    run.add_argument("--db", type=Path, default=REPO_ROOT / "data" / "warehouse.duckdb")
    ui = commands.add_parser("ui", help="start the Dagster UI on 127.0.0.1")
    ui.add_argument("--port", type=int, default=3000)
    serve = commands.add_parser("serve", help="serve the published folder on 127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--out", type=Path, default=REPO_ROOT / "data" / "published")
    args = parser.parse_args(argv)
    if args.command == "run":
        return run_pipeline(args.extracts, args.out, args.db)
    if args.command == "ui":
        return start_ui(args.port)
    return serve_folder(args.out, args.port)


def use_instance_environment() -> None:
    """Point Dagster at the repository's dagster.yaml unless DAGSTER_HOME is already set.

    The yaml's storage paths are relative, so work from the instance folder (DAGSTER_HOME): the
    repository root by default, where they mean ``data/dagster/``.
    """
    os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT))
    os.chdir(os.environ["DAGSTER_HOME"])


def run_pipeline(extracts: Path, out: Path, db: Path) -> int:
    """Register a school partition for every extract file, then load them all and refresh the trial
    results and the evidence table in one Dagster run (job ``load_and_refresh``) on the persistent
    instance. With no school registered at all, only the refresh runs (job ``refresh``)."""
    extracts, out, db = extracts.resolve(), out.resolve(), db.resolve()
    os.environ["MICROTRIALS_EXTRACTS"] = str(extracts)
    os.environ["MICROTRIALS_OUT"] = str(out)
    os.environ["MICROTRIALS_DB"] = str(db)
    use_instance_environment()

    from microtrials.errors import MicrotrialsError
    from microtrials.privacy import pupil_key_from_env

    try:
        if not extracts.is_dir():
            raise MicrotrialsError(f"extracts folder {extracts} does not exist: create it or pass --extracts")
        pupil_key_from_env(extracts, REPO_ROOT / "data" / "extracts")
    except MicrotrialsError as exc:
        print(f"microtrials run: {exc}", file=sys.stderr)
        return 2

    import dagster as dg
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    from pipelines.definitions import defs
    from pipelines.partitions import SCHOOLS, files_by_school

    try:
        instance = dg.DagsterInstance.get()
        schools = sorted(files_by_school(extracts))
        registered = set(instance.get_dynamic_partitions(SCHOOLS))
        new = [key for key in schools if key not in registered]
        if new:
            instance.add_dynamic_partitions(SCHOOLS, new)
        # Every registered school, in partition order: a school whose file has gone loads nothing
        # and keeps its rows (README "For officers").
        every = list(instance.get_dynamic_partitions(SCHOOLS))
        if every:
            job = defs.resolve_job_def("load_and_refresh")
            tags = {ASSET_PARTITION_RANGE_START_TAG: every[0], ASSET_PARTITION_RANGE_END_TAG: every[-1]}
        else:
            job, tags = defs.resolve_job_def("refresh"), {}
        result = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False, run_config=QUIET)
    except MicrotrialsError as exc:
        print(f"microtrials run failed: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    if not result.success:
        print(f"microtrials run failed: {_failure_reason(result)}", file=sys.stderr)
        return 1
    print(f"evidence table written to {out / 'evidence_table.csv'} (Dagster run {result.run_id}, "
          f"{len(files_by_school(extracts))} school partition(s) loaded)")
    return 0


def _failure_reason(result) -> str:
    """Why the run failed, on one line: the failed blocking checks, else the first step's error."""
    failed = _failed_checks(result)
    if failed:
        return f"blocking check failed (README \"For officers\" says what to do): {failed}"
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data.error is not None:
            error = event.step_failure_data.error
            while error.cause is not None and "MicrotrialsError" not in error.cls_name:
                error = error.cause
            return f"{event.step_key}: " + " ".join(error.message.split())
    return "the run did not succeed (see the Dagster UI)"


def _failed_checks(result) -> str:
    """Failed ERROR-severity checks of the run as 'asset:check (description); ...'."""
    failed = []
    for event in result.all_events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            if not evaluation.passed and evaluation.severity.value == "ERROR":
                key = evaluation.asset_check_key
                text = " ".join((evaluation.description or "failed").split())
                failed.append(f"{key.asset_key.to_user_string()}:{key.name} ({text})")
    return "; ".join(failed)


def start_ui(port: int) -> int:
    """`dagster dev` on 127.0.0.1 with the same instance and definitions."""
    use_instance_environment()
    command = [sys.executable, "-m", "dagster", "dev", "-h", "127.0.0.1", "-p", str(port),
               "-m", "pipelines.definitions"]
    return subprocess.call(command)


def serve_folder(out: Path, port: int) -> int:
    """Serve the published folder on 127.0.0.1 for a local preview."""
    from microtrials.site import serve

    serve(out.resolve(), port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
