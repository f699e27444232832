"""The `microtrials` command: run the pipeline, open the Dagster UI, preview the publication."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# Exit codes: 0 published; 1 the run failed, nothing new published; 2 nothing started (bad input or setup).
FAILED, NOT_STARTED = 1, 2
# Seconds `microtrials ui` gives Dagster's processes to stop after SIGTERM before killing them.
UI_STOP_SECONDS = 8


CORRECTION_ENV = "MICROTRIALS_CORRECTION"  # `run --correction WHY`: read by the evidence_table asset


class SetupError(Exception):
    """Something to fix before a run can start: the message says what and how."""


WORKSPACE_HELP = ("the workspace folder (holding microtrials.toml) (default: the nearest one at or above the "
                  "current folder, as git finds its repository; outside any, the bundled demo in data/)")
DEMO = REPO_ROOT / "data"


def _parser() -> argparse.ArgumentParser:
    """Every command and option, each with its default (`microtrials COMMAND --help`)."""
    parser = argparse.ArgumentParser(
        prog="microtrials", description=__doc__ + " Inside a workspace (`microtrials init DIR`), every command "
        "uses its folders; outside one, the bundled demo in data/.",
        epilog="`microtrials COMMAND --help` describes each command's options.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    init = commands.add_parser("init", help="create an empty workspace for real use (README \"Going live\")",
                               description="Create an empty workspace in DIR: extracts/, trials.csv (header row "
                               "only), published/, feedback/, the warehouse, the Dagster instance (dagster/, "
                               "SQLite), a new pupil key file (mode 0600) and microtrials.toml naming them.")
    init.add_argument("dir", type=Path, metavar="DIR", help="a new or empty folder")
    init.add_argument("--area", default="our schools",
                      help="the area the pages name: \"What works for AREA\" (default: %(default)s)")
    init.add_argument("--key-file", type=Path, default=None, metavar="FILE",
                      help="where to create the pupil key (default: ~/.config/microtrials/<DIR name>-<id>.pupil-key, "
                      "outside the workspace; $XDG_CONFIG_HOME instead of ~/.config when set)")
    init.add_argument("--send-to", default="", metavar="ADDRESS",
                      help="the secure transfer address or upload link schools send files to (default: blank, "
                      "to fill in microtrials.toml later)")
    init.add_argument("--questions-email", default="", metavar="EMAIL",
                      help="the e-mail for schools' questions (default: blank)")
    init.add_argument("--data-team", default="", metavar="NAME", help="who the data team is (default: blank)")
    init.add_argument("--results-due-days", type=int, default=14, metavar="DAYS",
                      help="results are due DAYS after a round's end_date, unless the registry's results_due "
                      "column says (default: %(default)s)")
    run = commands.add_parser("run", help="load the extracts, fit the models, publish the evidence table",
                              description="Load every school file, fit the models, publish the evidence table "
                              "and site, and print the officer's to-do list. Exit 0 published; 1 the run failed "
                              "(the last good publication stays); 2 nothing started (what to fix is printed).")
    _workspace_option(run)
    run.add_argument("--extracts", type=Path, default=None, metavar="DIR",
                     help="the school files (default: the workspace's extracts/; the demo's data/extracts)")
    run.add_argument("--out", type=Path, default=None, metavar="DIR",
                     help="the publication, replaced whole (default: the workspace's published/; the demo's "
                     "data/published)")
    run.add_argument("--db", type=Path, default=None, metavar="FILE",
                     help="the DuckDB warehouse (default: the workspace's; the demo's data/warehouse.duckdb)")
    run.add_argument("--trials", type=Path, default=None, metavar="FILE",
                     help="the trial registry (default: the workspace's trials.csv; outside a workspace "
                     "$MICROTRIALS_TRIALS, else trials.csv beside the extracts folder, i.e. <extracts>/../trials.csv)")
    run.add_argument("--new-pupil-key", action="store_true",
                     help="the pupil key was changed on purpose: accept the new key for this run "
                     "(every pupil then looks new to the warehouse) (default: off, a changed key is refused)")
    run.add_argument("--correction", default=None, metavar="WHY",
                     help="this run corrects an earlier mistake (e.g. a wrongly removed school): the trials it "
                     "changes show one history point reading 'correction: WHY' in place of the mistaken one "
                     "(default: an ordinary run)")
    ui = commands.add_parser("ui", help="start the Dagster UI on 127.0.0.1",
                             description="Start the Dagster UI (with its daemon: schedules, sensor, queue) "
                             "on the workspace's instance; Ctrl-C stops it.")
    _workspace_option(ui)
    ui.add_argument("--port", type=int, default=3000, help="the port on 127.0.0.1 (default: %(default)s)")
    serve = commands.add_parser("serve", help="serve the published folder on 127.0.0.1",
                                description="Preview the publication in a browser on 127.0.0.1; Ctrl-C stops it.")
    _workspace_option(serve)
    serve.add_argument("--port", type=int, default=8000, help="the port on 127.0.0.1 (default: %(default)s)")
    serve.add_argument("--out", type=Path, default=None, metavar="DIR",
                       help="the folder to serve (default: the workspace's published/; the demo's data/published)")
    plan = commands.add_parser(
        "plan", help="what a next round could detect: MDES, evidence strength, schools needed",
        description="Plan a round of INTERVENTION: the smallest effect it could reliably detect (80% power, "
        "5% two-sided; PowerUpR mdes.bira2, pupils randomised within schools), the evidence strength it "
        "would earn, and the schools needed for strengths 4 and 5, using what earlier rounds in the "
        "warehouse showed (else the network's trials on the same outcome, else documented defaults).")
    _workspace_option(plan)
    plan.add_argument("intervention", help="the intervention's registered name (or an alias)")
    plan.add_argument("--schools", type=int, required=True, help="schools in the round (required)")
    plan.add_argument("--pupils-per-school", type=int, default=None,
                      help="pupils randomised per school (default: as in the earlier rounds, else 60)")
    plan.add_argument("--db", type=Path, default=None, metavar="FILE",
                      help="the warehouse to learn from, opened read-only (default: the workspace's; the demo's "
                      "data/warehouse.duckdb)")
    plan.add_argument("--trials", type=Path, default=None, metavar="FILE",
                      help="the registry (default: the workspace's trials.csv; outside a workspace "
                      "$MICROTRIALS_TRIALS, else data/trials.csv)")
    _change_parsers(commands)
    return parser


def _workspace_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--workspace", type=Path, default=None, metavar="DIR", help=WORKSPACE_HELP)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    args = _parser().parse_args(argv)
    if args.command == "init":
        return init_workspace(args)
    from microtrials import workspace
    from microtrials.errors import MicrotrialsError

    try:
        ws = workspace.locate(args.workspace)
    except MicrotrialsError as exc:
        print(f"microtrials {args.command}: {' '.join(str(exc).split())}", file=sys.stderr)
        return NOT_STARTED
    if ws is not None:
        other = os.environ.get("DAGSTER_HOME")
        if other and Path(other).absolute() != ws.dagster_home:
            print(f"microtrials {args.command}: note: DAGSTER_HOME={other} is not used inside the workspace {ws.root}; "
                  f"its Dagster instance is {ws.dagster_home} (dagster_home in {workspace.CONFIG_NAME})", file=sys.stderr)
        os.environ.update(workspace.environment(ws))
    elif args.command == "run" and args.extracts is None:
        print(f"microtrials {args.command}: no {workspace.CONFIG_NAME} here or above, so this is the bundled demo "
              f"({DEMO}); for your own data: microtrials init DIR (README \"Going live\")", file=sys.stderr)

    def default(given: Path | None, in_workspace: Path | None, demo: Path | None) -> Path | None:
        return given if given is not None else (in_workspace if ws is not None else demo)

    if args.command in ("accept", "withdraw"):
        args.db = default(args.db, ws and ws.warehouse, DEMO / "warehouse.duckdb")
        return change_command(args)
    if args.command == "plan":
        return plan_round(args.intervention, args.schools, args.pupils_per_school,
                          default(args.db, ws and ws.warehouse, DEMO / "warehouse.duckdb"),
                          default(args.trials, ws and ws.registry, None))
    if args.command == "run":
        return run_pipeline(default(args.extracts, ws and ws.extracts, DEMO / "extracts"),
                            default(args.out, ws and ws.published, DEMO / "published"),
                            default(args.db, ws and ws.warehouse, DEMO / "warehouse.duckdb"),
                            new_pupil_key=args.new_pupil_key, trials=default(args.trials, ws and ws.registry, None),
                            correction=args.correction)
    if args.command == "ui":
        return start_ui(args.port)
    return serve_folder(default(args.out, ws and ws.published, DEMO / "published"), args.port)


def init_workspace(args: argparse.Namespace) -> int:
    """`microtrials init DIR`: :func:`microtrials.workspace.init`, then what to do next."""
    from microtrials import workspace
    from microtrials.errors import MicrotrialsError

    contact = workspace.Contact(args.send_to.strip(), args.questions_email.strip(), args.data_team.strip(),
                                args.results_due_days)
    try:
        if not 0 <= args.results_due_days <= 366:
            raise MicrotrialsError("--results-due-days must be from 0 to 366")
        ws = workspace.init(args.dir, (REPO_ROOT / "dagster.yaml").read_text(encoding="utf-8"), args.area.strip()
                            or workspace.DEFAULT_AREA, args.key_file, contact, demo=DEMO)
    except (MicrotrialsError, OSError) as exc:
        print(f"microtrials init: {' '.join(str(exc).split())}", file=sys.stderr)
        return NOT_STARTED
    print(workspace.next_steps(ws, workspace.command_name()))
    return 0


def _change_parsers(commands) -> None:
    """The ``accept`` and ``withdraw`` commands (docs/loading.md, README officer section)."""
    accept = commands.add_parser(
        "accept", help="apply a held change on purpose (a file that would lose more than half of a trial round, "
        "or a withdrawn school's file)",
        description="Apply the held changes of FILE (its current content): the changes a run held because they "
        "would lose more than half of a school's pupils or outcome scores for a trial round, or because the "
        "school was withdrawn from a trial round the file has rows for (accepting brings the school back). "
        "Recorded as 'accepted' in the warehouse's change_sets table.")
    _workspace_option(accept)
    accept.add_argument("file", type=Path, help="the school's extract file, e.g. extracts/222005.csv")
    accept.add_argument("--db", type=Path, default=None, metavar="FILE",
                        help="the warehouse (default: the workspace's; the demo's data/warehouse.duckdb)")
    withdraw = commands.add_parser(
        "withdraw", help="remove a school's rows (the school withdrew, or asked for erasure)",
        description="Remove school URN's pupil rows (all, or one trial's and/or one round's) with the rows set "
        "aside that explained them; recorded as 'withdrawn' in change_sets, and the history says 'withdrawn'. "
        "Later files of the school are held until 'microtrials accept': without --trial/--round every file of "
        "the school (any trial, any round); with --trial any outcome measure and round of that trial; with "
        "--round that round, any outcome measure.")
    _workspace_option(withdraw)
    withdraw.add_argument("urn", help="the school's 6-digit URN")
    withdraw.add_argument("--trial", default=None, metavar="NAME",
                          help="only this intervention, name or alias (default: every trial of the school)")
    withdraw.add_argument("--round", default=None, metavar="R",
                          help="only this round, e.g. '2026 Autumn' (default: every round)")
    withdraw.add_argument("--db", type=Path, default=None, metavar="FILE",
                          help="the warehouse (default: the workspace's; the demo's data/warehouse.duckdb)")


def change_command(args: argparse.Namespace) -> int:
    """Run ``accept`` or ``withdraw``; print what changed; exit 0 when something changed, 1 when
    nothing did, 2 on an error (said in one line, what to do)."""
    from microtrials.ingest import change_commands
    from microtrials.errors import MicrotrialsError

    try:
        if args.command == "accept":
            code, lines = change_commands.accept(args.file, args.db, _feedback_folder())
        else:
            code, lines = change_commands.withdraw(args.urn, args.db, args.trial, args.round)
    except MicrotrialsError as exc:
        print(f"microtrials {args.command}: {exc}", file=sys.stderr)
        return NOT_STARTED
    print("\n".join(lines))
    return code


def plan_round(intervention: str, schools: int, pupils: int | None, db: Path, trials: Path | None) -> int:
    """`microtrials plan`: print :func:`microtrials.stats.planner.plan_from_warehouse` for the intervention.

    The warehouse is opened read-only (a run may be writing; nothing is changed). An intervention
    that is neither registered (name or alias) nor analysed in the warehouse is refused with one
    line naming the known ones (exit 2); so is a plan of fewer than 2 schools or pupils.
    """
    from microtrials.stats import planner
    from microtrials.ingest import warehouse
    from microtrials.errors import MicrotrialsError
    from microtrials.ingest.names import match_key
    from microtrials.ingest.registry import load_registry, registry_path

    try:
        registry = load_registry(registry_path(REPO_ROOT / "data" / "extracts", trials))
        con = warehouse.connect_with_retry(db, read_only=True, timeout_s=30) if db.is_file() else None
        try:
            analysed = set()
            if con is not None and warehouse.table_exists(con, "trial_results"):
                analysed = {str(i) for (i,) in con.execute(warehouse.sql("trial_interventions")).fetchall()}
            known = {match_key(i): i for i in analysed}
            if registry is not None:
                known.update({match_key(i): i for i in registry.interventions()})
            if (registry is None or registry.canonical(intervention) is None) and match_key(intervention) not in known:
                names = ", ".join(sorted(known.values())) or "none yet"
                raise MicrotrialsError(
                    f"'{intervention}' is neither a registered intervention nor a trial in the warehouse {db} "
                    f"(known: {names}): check the spelling, or register it in trials.csv first")
            if con is None:
                text = planner.plan_text(planner.plan_for(intervention, schools, pupils, None, registry))
                text += f"\n(No warehouse at {db} yet, so nothing earlier was learnt from.)"
            else:
                text = planner.plan_from_warehouse(con, intervention, schools, pupils, registry)
        finally:
            if con is not None:
                con.close()
    except MicrotrialsError as exc:
        print(f"microtrials plan: {' '.join(str(exc).split())}", file=sys.stderr)
        return NOT_STARTED
    print(text)
    return 0


def use_instance_environment() -> Path:
    """Point Dagster at the repository's dagster.yaml unless DAGSTER_HOME is already set; the instance folder.

    The yaml's storage paths are relative, so work from the instance folder (DAGSTER_HOME): the
    repository root by default, where they mean ``data/dagster/``. A DAGSTER_HOME that is not a
    folder holding a dagster.yaml is refused with what to do.
    """
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(REPO_ROOT)))
    if not home.is_dir():
        raise SetupError(
            f"DAGSTER_HOME={home} is not a folder: create it and copy the repository's dagster.yaml into it "
            f"(mkdir -p {home} && cp {REPO_ROOT / 'dagster.yaml'} {home}/), or unset DAGSTER_HOME to use the "
            "repository's"
        )
    if not (home / "dagster.yaml").is_file():
        raise SetupError(
            f"DAGSTER_HOME={home} has no dagster.yaml: copy the repository's into it "
            f"(cp {REPO_ROOT / 'dagster.yaml'} {home}/; it sets the storage and the warehouse pool), or unset "
            "DAGSTER_HOME to use the repository's"
        )
    os.chdir(home)
    from pipelines.launch import use_dagster_settings

    use_dagster_settings()
    return home


def check_extracts_folder(extracts: Path) -> None:
    """The extracts folder exists and can be listed; else a SetupError saying what to do."""
    if not extracts.exists():
        raise SetupError(f"extracts folder {extracts} does not exist: create it or pass --extracts")
    if not extracts.is_dir():
        raise SetupError(f"{extracts} is a file, not a folder: pass the folder holding the extracts with --extracts")
    try:
        os.listdir(extracts)
    except OSError as exc:
        raise SetupError(
            f"cannot read the extracts folder {extracts} ({exc.strerror or exc}): give the account running "
            "microtrials read access to it (ask IT), or pass another folder with --extracts"
        ) from exc


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (both resolved)."""
    return path == folder or folder in path.parents


def instance_folders(home: Path) -> list[Path]:
    """DAGSTER_HOME's storage folders: every ``base_dir`` its dagster.yaml names (relative to DAGSTER_HOME)."""
    import yaml

    try:
        config = yaml.safe_load((home / "dagster.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    found: list[Path] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "base_dir" and isinstance(value, str):
                    found.append((home / value).resolve())
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return found


def check_output_folder(out: Path, extracts: Path, db: Path, feedback: Path, home: Path,
                        trials: Path | None = None) -> None:
    """A SetupError when publishing to ``out`` could delete or mix with data: every path resolved.

    Each publication replaces the whole ``out`` folder, so ``out`` may not be, contain or lie inside
    the extracts folder or the private feedback folder; may not be or contain the warehouse file,
    the registry file or DAGSTER_HOME; and may not overlap a storage folder of the Dagster instance
    (its run history). ``out`` inside DAGSTER_HOME is allowed: the default instance folder is the
    repository root, which holds ``data/published``.
    """
    def refuse(what: str) -> SetupError:
        return SetupError(
            f"--out {out} {what}; each publication replaces the whole --out folder, so it must be a folder "
            f"of its own: choose another, e.g. --out {extracts.parent / 'published'} (nothing was changed)")

    for name, folder in (("the extracts folder", extracts), ("the feedback folder", feedback)):
        if out == folder:
            raise refuse(f"is {name}")
        if _inside(folder, out):
            raise refuse(f"holds {name} {folder}")
        if _inside(out, folder):
            raise refuse(f"is inside {name} {folder}")
    for name, path in (("the warehouse", db), ("the trial registry", trials), ("DAGSTER_HOME", home)):
        if path is not None and _inside(path, out):
            raise refuse(f"holds {name} {path}" if path != out else f"is {name}")
    for folder in instance_folders(home):
        if _inside(folder, out) or _inside(out, folder):
            raise refuse(f"overlaps the Dagster instance's storage {folder} (run history, logs)")


def run_pipeline(extracts: Path, out: Path, db: Path, new_pupil_key: bool = False, trials: Path | None = None,
                 correction: str | None = None) -> int:
    """Register a school partition for every extract file, then load them all and refresh the trial
    results and the evidence table in one Dagster run (job ``load_and_refresh``) on the persistent
    instance. With no school registered at all, only the refresh runs (job ``refresh``).

    Before starting, runs of an earlier `microtrials run` whose process died are marked failed and
    their pool slots freed. Ends with a summary of what was loaded and where the results are.
    """
    extracts, out, db = extracts.resolve(), out.resolve(), db.resolve()
    os.environ["MICROTRIALS_EXTRACTS"] = str(extracts)
    os.environ["MICROTRIALS_OUT"] = str(out)
    os.environ["MICROTRIALS_DB"] = str(db)
    if trials is not None:
        if not trials.is_file():  # named on purpose: a typo should not silently publish without the plan
            print(f"microtrials run: --trials {trials}: no such file. Give the path of the trial registry "
                  "(trials.csv), or leave --trials out to use trials.csv beside the extracts folder", file=sys.stderr)
            return NOT_STARTED
        os.environ["MICROTRIALS_TRIALS"] = str(trials.resolve())
    if new_pupil_key:
        os.environ["MICROTRIALS_NEW_PUPIL_KEY"] = "1"
    os.environ.pop(CORRECTION_ENV, None)  # only the run it was given for is a correction
    if correction and correction.strip():
        os.environ[CORRECTION_ENV] = correction.strip()

    from microtrials.publish import publish
    from microtrials.errors import MicrotrialsError
    from microtrials.ingest.privacy import pupil_key_from_env
    from microtrials.ingest.registry import load_registry, registry_path

    try:
        home = use_instance_environment().resolve()
        check_extracts_folder(extracts)
        check_output_folder(out, extracts, db, _feedback_folder().resolve(), home, registry_path(extracts).resolve())
        load_registry(registry_path(extracts))  # a registry that cannot be read stops the run here (exit 2)
        publish.check_replaceable(out)  # before loading anything: publishing would refuse it anyway
        key = pupil_key_from_env(extracts, REPO_ROOT / "data" / "extracts")
        if os.environ.get("MICROTRIALS_TEST_SKIP_KEY_PRECHECK") != "1":  # tests/test_cli_safety.py: the load's own test
            check_key_matches(db, key, new_pupil_key)
    except (SetupError, MicrotrialsError) as exc:
        print(f"microtrials run: {' '.join(str(exc).split())}", file=sys.stderr)
        return NOT_STARTED

    from pipelines import launch

    launch.stop_on_signals()
    stopped = ("microtrials run: stopped (Ctrl-C or SIGTERM); the warehouse keeps only what was committed "
               "before the stop and the last good publication stays; run again to finish")
    try:
        result = launch.run_everything(extracts, home)
    except KeyboardInterrupt:
        print(stopped, file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - before the run: what an officer can act on, else the trace
        failure = launch.failure_for(exc)
        if failure is None:
            raise
        print(f"microtrials run failed: {failure.description}", file=sys.stderr)
        return FAILED
    if result.interrupted:
        print(stopped, file=sys.stderr)
        return 130
    if not result.success or not result.published:
        reason = result.reason
        if not result.published and result.reason.startswith("blocking check failed"):
            # the blocking checks run before the swap (the publication's on the staged files): nothing was swapped in
            reason += f"; nothing was published, the last good publication in {out} stays"
        print(f"microtrials run failed: {reason}", file=sys.stderr)
        return FAILED
    lines, nothing_new = summary(extracts, out, db, result.run_id)
    print("\n".join(lines))
    if nothing_new:
        print(f"microtrials run failed: no trial could be refreshed, the last published figures stay: {nothing_new}",
              file=sys.stderr)
        return FAILED
    return 0


def check_key_matches(db: Path, key: bytes, new_key: bool) -> None:
    """Refuse before starting (MicrotrialsError) a pupil key the warehouse at ``db`` was not loaded with.

    The same test the load makes (:func:`microtrials.ingest.privacy.check_key_unchanged`) on a read-only
    connection, so a changed key is a setup error (exit 2), not a failed step. Where the load would
    record a fingerprint (a first load, an accepted new key), the read-only connection refuses the
    write and nothing is said; a warehouse busy with another run is left to the load's own test.
    """
    import duckdb

    from microtrials.ingest import privacy
    from microtrials.ingest import warehouse
    from microtrials.errors import MicrotrialsError

    if not db.is_file():
        return
    try:
        con = warehouse.connect_with_retry(db, read_only=True, timeout_s=5)
    except (MicrotrialsError, duckdb.Error, OSError):  # busy or unreadable: the load says so in its own words
        return
    try:
        privacy.check_key_unchanged(con, key, new_key)
    except duckdb.Error:
        pass
    finally:
        con.close()


def summary(extracts: Path, out: Path, db: Path, run_id: str) -> tuple[list[str], str]:
    """What the run did, for the terminal: files loaded / rejected / unchanged, rows set aside,
    warnings, trials by status, then the officer's to-do list (:mod:`microtrials.summary`) and where
    the feedback and the site are; and, when every estimable trial failed to refresh (nothing new
    could be published), those trials with their reasons on one line (else '')."""
    import pandas as pd

    from microtrials import workspace
    from microtrials.publish import publish
    from microtrials.ingest import change_sets, warehouse
    from microtrials import summary as todo

    evidence = out / "evidence_table.csv"
    table = publish.read_published_csv(evidence) if evidence.is_file() else pd.DataFrame()
    ws = workspace.from_environment()
    feedback = _feedback_folder()
    lines = [f"microtrials run finished (Dagster run {run_id})"]
    con = warehouse.connect_with_retry(db, read_only=True, timeout_s=30)
    try:
        facts = todo.gather(con, table, extracts, feedback, ws.contact.missing() if ws else [],
                            ws is None and extracts == (DEMO / "extracts").resolve(),
                            str(out / "registry_report.csv"))
        twice = change_sets.stored_twice(con) if warehouse.table_exists(con, "pupils") else ""
        warning_rows = None
        if facts.files is not None and "rows_with_warnings" not in facts.files and warehouse.table_exists(con, "load_warnings"):
            warning_rows = con.execute(
                warehouse.sql("load_warning_count"), {"files": list(facts.files["file_name"])}).fetchall()[0][0]
    finally:
        con.close()
    report = facts.files
    if report is not None and "rows_with_warnings" in report:
        warning_rows = int(pd.to_numeric(report["rows_with_warnings"], errors="coerce").fillna(0).sum())
    if report is None or report.empty:
        lines.append(f"files: none in {extracts} (put the schools' extract files there and run again)")
    else:
        lines += _file_lines(report, extracts, warning_rows)
    lines += [twice] if twice else []
    if "status" in table:
        counts = table["status"].value_counts()
        lines.append(f"trials: {len(table)} ({', '.join(f'{n} {s}' for s, n in counts.items())})" if len(table)
                     else "trials: none yet (an empty evidence table was published)")
    lines += todo.todo_lines(facts)
    if feedback.is_dir() and any(feedback.rglob("*.csv")):
        lines.append(f"what each school should fix: {feedback}/<URN>/ (private: send each school only its own)")
    lines.append(f"evidence table: {out / 'evidence_table.csv'}")
    lines.append(f"site: {out / 'index.html'} (preview: microtrials serve --out {out})")
    statuses = table["status"] if "status" in table else pd.Series(dtype=str)
    nothing_new = ""
    if (statuses == "not_refreshed").any() and not statuses.isin(["published", "interim"]).any():
        stale = table[statuses == "not_refreshed"]
        nothing_new = "; ".join(
            f"{row['intervention']} / {row['outcome_measure']} ({_reason(row.get('notes'))})" for _, row in stale.iterrows()
        )
    return lines, nothing_new


def _file_lines(report, extracts: Path, warning_rows: int | None, shown: int = 10) -> list[str]:
    """The load report in a few lines: files by status (ignored entries too), each file-level warning
    (e.g. read as Windows-1252) named, rows set aside, rows and files with a warning. (Files that
    loaded nothing are named in the to-do list.)"""
    import pandas as pd

    statuses = report["status"].astype(str)
    if "superseded" in report:  # change_sets.superseded_files: an unchanged file whose rows are gone says why
        gone = statuses.eq("unchanged") & report["superseded"].isin(["replaced", "withdrawn"])
        statuses = statuses.where(~gone, report["superseded"])
    status = statuses.value_counts()
    counts = [f"{status.get('loaded', 0)} loaded", f"{status.get('unchanged', 0)} unchanged since their last load"]
    words = {"replaced": "replaced by a later file", "withdrawn": "of a school withdrawn (microtrials withdraw)"}
    counts += [f"{status[s]} {text}" for s, text in words.items() if status.get(s, 0)]
    counts.append(f"{status.get('rejected', 0)} rejected")
    if status.get("ignored", 0):
        counts.append(f"{status['ignored']} ignored (not extracts: folders, hidden or other files)")
    counts += [f"{n} {s}" for s, n in status.items() if s not in ("loaded", "unchanged", "rejected", "ignored", *words)]
    lines = [f"files: {len(report)} in {extracts}: {', '.join(counts)}"]
    warned = report.iloc[0:0]
    column = "file_warnings" if "file_warnings" in report else "warnings"  # a report from before the column: all
    if column in report:
        warned = report[report[column].fillna("").astype(str).str.strip().ne("") & (report["status"] != "rejected")]
    for _, row in warned.head(shown).iterrows():
        lines.append(f"  warning {row['file_name']}: {' '.join(str(row[column]).split())}")
    if len(warned) > shown:
        lines.append(f"  ... and {len(warned) - shown} more files with a warning (in each school's feedback file)")
    lines += _change_lines(report)

    def total(name: str) -> int:
        return int(pd.to_numeric(report[name], errors="coerce").fillna(0).sum()) if name in report else 0
    kept_out, blanked = total("rows_quarantined"), total("outcomes_set_aside")
    text = f"rows set aside (quarantine): {kept_out + blanked:,}"
    if blanked:
        text += f" ({kept_out:,} kept out; {blanked:,} loaded with the outcome set aside, the pupil kept as randomised)"
    if warning_rows is not None:
        text += f"; rows loaded with a warning: {warning_rows:,}"
    if column in report:
        text += f"; files with a warning about the whole file: {len(warned):,}"
    return lines + [text]


def _change_lines(report, shown: int = 40) -> list[str]:
    """What the files did to the warehouse, one line per school trial round (held changes first),
    the first ``shown`` of them."""
    from microtrials.ingest.change_sets import HELD_MARK

    if "changes" not in report:
        return []
    changes = [line for cell in report["changes"].fillna("").astype(str) for line in cell.split("\n") if line.strip()]
    held = [line for line in changes if HELD_MARK in line]
    ordered = held + [line for line in changes if line not in held]
    lines = ["changes to the warehouse:" if ordered else "changes to the warehouse: none"]
    lines += [f"  {line}" for line in ordered[:shown]]
    if len(ordered) > shown:
        lines.append(f"  ... and {len(ordered) - shown} more changes (all in the warehouse's change_sets table; "
                     "the Dagster UI shows each school's as the pupils asset's 'changes')")
    return lines


def _reason(notes: object) -> str:
    """The plain reason a not_estimable or not_refreshed row carries first in its notes."""
    text = "" if notes is None or (isinstance(notes, float) and notes != notes) else str(notes)
    return text.split(";")[0].strip() or "no reason recorded"


def _feedback_folder() -> Path:
    """Where the private per-school feedback files go (pipelines.resources.Settings, else data/feedback)."""
    from pipelines.resources import default_resources

    settings = default_resources()["settings"]
    folder = getattr(settings, "feedback", None)
    return Path(folder) if folder is not None else REPO_ROOT / "data" / "feedback"


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something already listens on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.errno in (errno.EADDRINUSE, errno.EACCES)
    return False


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    from microtrials.publish.publish import pid_alive

    return pid_alive(pid)


def start_ui(port: int) -> int:
    """`dagster dev` on 127.0.0.1 with the same instance and definitions, in a process group of its own.

    A busy port is refused with one line (exit 1). SIGTERM or SIGINT stop the webserver, the daemon
    and the code server: SIGTERM to the group, then SIGKILL to whatever of it is left after
    ``UI_STOP_SECONDS``.
    """
    try:
        use_instance_environment()
    except SetupError as exc:
        print(f"microtrials ui: {exc}", file=sys.stderr)
        return NOT_STARTED
    if port_in_use(port):
        print(f"microtrials ui: port {port} on 127.0.0.1 is already in use (another `microtrials ui`?): stop "
              f"that program, or pass another port, e.g. --port {port + 1}", file=sys.stderr)
        return FAILED
    command = [sys.executable, "-m", "dagster", "dev", "-h", "127.0.0.1", "-p", str(port),
               "-m", "pipelines.definitions"]
    child = subprocess.Popen(command, start_new_session=True)
    stopping = []

    def stop(signum, frame):
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while child.poll() is None and not stopping:
        time.sleep(0.2)
    if child.poll() is not None:
        return child.returncode
    _stop_group(child)
    return 0


def _stop_group(child: subprocess.Popen) -> None:
    """SIGTERM to the child's process group, SIGKILL to any of it (or its descendants) still alive after the grace."""
    tree = descendants(child.pid) | {child.pid}
    try:
        os.killpg(child.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + UI_STOP_SECONDS
    while time.monotonic() < deadline:
        child.poll()
        tree |= descendants(child.pid) if child.returncode is None else set()
        if not any(_alive(pid) for pid in tree):
            return
        time.sleep(0.2)
    for pid in tree:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    child.wait(timeout=5)


def serve_folder(out: Path, port: int) -> int:
    """Serve the published folder on 127.0.0.1 for a local preview."""
    from microtrials.publish.site import serve

    serve(out.resolve(), port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
