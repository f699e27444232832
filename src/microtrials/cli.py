"""The `microtrials` command: run the pipeline, open the Dagster UI, preview the publication."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


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

    The yaml's storage paths are relative to the repository root, so work from there.
    """
    os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT))
    os.chdir(REPO_ROOT)


def run_pipeline(extracts: Path, out: Path, db: Path) -> int:
    """Materialise every asset in one Dagster run on the persistent instance."""
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

    from pipelines.definitions import ALL_ASSETS
    from pipelines.resources import default_resources

    instance = dg.DagsterInstance.get()
    result = dg.materialize(ALL_ASSETS, instance=instance, resources=default_resources(), raise_on_error=False)
    if not result.success:
        print(f"microtrials run failed: {_failure_reason(result)}", file=sys.stderr)
        return 1
    print(f"evidence table written to {out / 'evidence_table.csv'} (Dagster run {result.run_id})")
    return 0


def _failure_reason(result) -> str:
    """The first step failure's message, on one line."""
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data.error is not None:
            error = event.step_failure_data.error
            while error.cause is not None and "MicrotrialsError" not in error.cls_name:
                error = error.cause
            return f"{event.step_key}: " + " ".join(error.message.split())
    return "the run did not succeed (see the Dagster UI)"


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
