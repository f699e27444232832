"""`microtrials run` never deletes data through --out, and says why a run failed in one plain line.

Every test runs the real console script in a subprocess, as an officer does (red-team findings 1, 9, 10).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers.cli_safety import KEY, MICROTRIALS, SCHOOLS, home_at, listing, run, some_extracts


def refused(done: subprocess.CompletedProcess, words: str) -> None:
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], done.stderr[-3000:]


@pytest.mark.slow
def test_out_that_is_or_holds_the_extracts_is_refused_and_nothing_is_deleted(tmp_path):
    extracts = some_extracts(tmp_path / "case" / "extracts")
    before = listing(tmp_path / "case")
    home = home_at(tmp_path / "home")
    same = run(extracts, extracts, tmp_path / "w.duckdb", home)
    refused(same, "is the extracts folder")
    above = run(extracts, tmp_path / "case", tmp_path / "w.duckdb", home)
    refused(above, "holds the extracts folder")
    below = run(extracts, extracts / "published", tmp_path / "w.duckdb", home)
    refused(below, "is inside the extracts folder")
    assert listing(tmp_path / "case") == before
    assert not (tmp_path / "w.duckdb").exists(), "nothing started"


@pytest.mark.slow
def test_out_holding_the_warehouse_dagster_home_or_the_feedback_is_refused(tmp_path):
    extracts = some_extracts(tmp_path / "extracts")
    home = home_at(tmp_path / "sb" / "home")
    refused(run(extracts, tmp_path / "sb", tmp_path / "w.duckdb", home), "holds DAGSTER_HOME")
    assert (home / "dagster.yaml").is_file()
    refused(run(extracts, tmp_path / "o7", tmp_path / "o7" / "wh.duckdb", home_at(tmp_path / "h2")),
            "holds the warehouse")
    refused(run(extracts, tmp_path / "pub", tmp_path / "w.duckdb", home_at(tmp_path / "h3"),
                feedback=tmp_path / "pub" / "feedback"), "holds the feedback folder")
    # DAGSTER_HOME's storage (the instance's run history) under --out is refused too.
    refused(run(extracts, tmp_path / "h4" / "data", tmp_path / "w.duckdb", home_at(tmp_path / "h4")),
            "overlaps the Dagster instance's storage")


@pytest.mark.slow
def test_out_holding_other_files_is_never_replaced(tmp_path):
    """Not caught by the overlap test (no known path inside), yet not a publication: refused before starting."""
    extracts = some_extracts(tmp_path / "extracts")
    out = tmp_path / "documents"
    out.mkdir()
    (out / "budget.xlsx").write_bytes(b"someone's spreadsheet")
    (out / "notes.docx").write_bytes(b"someone's notes")
    done = run(extracts, out, tmp_path / "w.duckdb", home_at(tmp_path / "home"))
    refused(done, "not a microtrials publication")
    assert listing(out) == {"budget.xlsx": b"someone's spreadsheet", "notes.docx": b"someone's notes"}
    assert not (tmp_path / "w.duckdb").exists(), "nothing started"


@pytest.mark.slow
def test_a_changed_pupil_key_is_a_setup_error_in_one_line(tmp_path):
    extracts = some_extracts(tmp_path / "extracts")
    home = home_at(tmp_path / "home")
    first = run(extracts, tmp_path / "out", tmp_path / "w.duckdb", home)
    assert first.returncode == 0, first.stderr[-3000:]
    published = listing(tmp_path / "out")
    changed = run(extracts, tmp_path / "out", tmp_path / "w.duckdb", home, "another-key-entirely-8e1f0c2d9a7b6e5f")
    refused(changed, "MICROTRIALS_PUPIL_KEY is not the key this warehouse was loaded with")
    assert "Traceback" not in changed.stderr and "Stack Trace" not in changed.stderr
    assert listing(tmp_path / "out") == published


@pytest.mark.slow
def test_a_microtrials_error_inside_a_step_has_no_traceback_on_the_terminal(tmp_path, monkeypatch):
    """The key test inside the load (the pre-check cannot see a warehouse busy with another run):
    exit 1, no stack trace, the reason without the error's class name."""
    extracts = some_extracts(tmp_path / "extracts")
    home = home_at(tmp_path / "home")
    assert run(extracts, tmp_path / "out", tmp_path / "w.duckdb", home).returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MICROTRIALS_", "DAGSTER_"))}
    env |= {"DAGSTER_HOME": str(home), "MICROTRIALS_PUPIL_KEY": "another-key-entirely-8e1f0c2d9a7b6e5f",
            "MICROTRIALS_TEST_SKIP_KEY_PRECHECK": "1"}
    done = subprocess.run([str(MICROTRIALS), "run", "--extracts", str(extracts), "--out", str(tmp_path / "out"),
                           "--db", str(tmp_path / "w.duckdb")], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Stack Trace" not in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "Not executing" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("microtrials run failed: pupils: MICROTRIALS_PUPIL_KEY is not the key"), last
    assert "MicrotrialsError" not in last
    assert len(done.stderr.strip().splitlines()) < 40
    # The whole error, stack trace and all, stays in the run's event log for whoever investigates.
    import dagster as dg

    monkeypatch.chdir(home)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    instance = dg.DagsterInstance.get()
    try:
        failed = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
        assert len(failed) == 1
        events = instance.all_logs(failed[0].run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        errors = [e.dagster_event.step_failure_data.error for e in events]
        assert errors and any(e.stack or (e.cause is not None and e.cause.stack) for e in errors)
    finally:
        instance.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("reuse", [False, True])
def test_an_empty_extracts_folder_is_a_plain_run_not_a_crash(tmp_path, reuse):
    home = home_at(tmp_path / "home")
    if reuse:  # an instance that knows schools already, whose files have all gone
        assert run(some_extracts(tmp_path / "extracts"), tmp_path / "out", tmp_path / "w.duckdb", home).returncode == 0
        for path in (tmp_path / "extracts").iterdir():
            path.unlink()
    else:
        (tmp_path / "extracts").mkdir()
    done = run(tmp_path / "extracts", tmp_path / "out", tmp_path / "w.duckdb", home)
    assert "ValueError" not in done.stderr and "CatalogException" not in done.stderr, done.stderr[-3000:]
    assert done.returncode in (0, 1), done.stderr[-3000:]
    if done.returncode == 1:
        assert len([line for line in done.stderr.splitlines() if line.startswith("microtrials run")]) == 1
    else:
        assert "files: none in" in done.stdout, done.stdout
        # Day one publishes an empty table; schools whose files have gone keep their rows (README).
        # (Maths mastery, sent by one school with no registry, is withheld by the publication gate.)
        assert ("trials: 1 (" if reuse else "trials: none yet") in done.stdout, done.stdout
        assert (tmp_path / "out" / "evidence_table.csv").is_file()


def test_the_file_check_passes_on_an_empty_extracts_folder(tmp_path):
    """Day one: no files, an empty `deliveries` table; pandas once refused to merge the empty keys."""
    import dagster as dg

    from microtrials.ingest import warehouse
    from pipelines import checks
    from pipelines.resources import Settings, Warehouse

    (tmp_path / "extracts").mkdir()
    warehouse.connect(tmp_path / "w.duckdb").close()
    result = checks.every_file_loaded_or_rejected(
        context=dg.build_asset_check_context(),
        settings=Settings(extracts_dir=str(tmp_path / "extracts"), out_dir=str(tmp_path / "out")),
        warehouse_db=Warehouse(database=str(tmp_path / "w.duckdb")))
    assert result.passed and result.metadata["files_checked"].value == 0


def test_a_run_whose_publication_failed_its_checks_exits_1(tmp_path, monkeypatch, capsys):
    """A blocking check on the staged publication fails: nothing is swapped in, the run failed, so exit 1."""
    from microtrials import cli
    from pipelines import launch

    for name in ("DAGSTER_HOME", "MICROTRIALS_EXTRACTS", "MICROTRIALS_OUT", "MICROTRIALS_DB", "MICROTRIALS_FEEDBACK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(home_at(tmp_path / "home")))
    for name in ("MICROTRIALS_EXTRACTS", "MICROTRIALS_OUT", "MICROTRIALS_DB"):
        monkeypatch.setenv(name, "")  # restored after the test: run_pipeline sets them
    monkeypatch.chdir(tmp_path)
    ended = launch.RunOutcome(run_id="r1", success=False, published=False, interrupted=False,
                              reason="blocking check failed: staged_publication:one_row_per_trial")
    monkeypatch.setattr(launch, "run_everything", lambda extracts, home: ended)
    code = cli.run_pipeline(some_extracts(tmp_path / "extracts"), tmp_path / "out", tmp_path / "w.duckdb")
    err = capsys.readouterr().err
    assert code == cli.FAILED, err
    assert "microtrials run failed: blocking check failed: staged_publication:one_row_per_trial" in err
    assert f"nothing was published, the last good publication in {tmp_path / 'out'} stays" in err


@pytest.mark.slow
def test_the_summary_counts_ignored_entries_and_names_whole_file_warnings(tmp_path):
    extracts = some_extracts(tmp_path / "extracts")
    lines = (extracts / "111601.csv").read_text().splitlines()
    lines = [lines[0] + ',"teacher"'] + [line + ',"Mme Gérard"' for line in lines[1:]]
    (extracts / "111601.csv").write_bytes(("\r\n".join(lines) + "\r\n").encode("cp1252"))  # saved as 'ANSI'
    (extracts / "old").mkdir()
    (extracts / "notes.txt").write_text("ring school on Monday")
    done = run(extracts, tmp_path / "out", tmp_path / "w.duckdb", home_at(tmp_path / "home"))
    assert done.returncode == 0, done.stderr[-3000:]
    files = next(line for line in done.stdout.splitlines() if line.startswith("files: "))
    assert files.startswith("files: 6 in ") and "4 loaded" in files and "2 ignored" in files, done.stdout
    assert "    ignored notes.txt: " in done.stdout and "    ignored old: " in done.stdout  # the to-do list names each
    assert "  warning 111601.csv: the file is not UTF-8" in done.stdout, done.stdout
    assert "files with a warning about the whole file: 1" in done.stdout


@pytest.mark.slow
def test_runs_at_once_on_a_fresh_dagster_home_all_finish(tmp_path):
    """They create the instance's SQLite storage at the same moment: no raw 'table ... already exists'.
    (Three runs, so that without the lock the race is lost most times, not just now and then.)"""
    home = home_at(tmp_path / "home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MICROTRIALS_", "DAGSTER_"))}
    env |= {"DAGSTER_HOME": str(home), "MICROTRIALS_PUPIL_KEY": KEY}
    children = []
    for n, names in enumerate((SCHOOLS[:2], SCHOOLS[2:3], SCHOOLS[3:])):
        extracts = some_extracts(tmp_path / f"e{n}", names)
        command = [str(MICROTRIALS), "run", "--extracts", str(extracts), "--out", str(tmp_path / f"o{n}"),
                   "--db", str(tmp_path / f"w{n}.duckdb")]
        children.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [child.communicate(timeout=240) for child in children]
    for child, (out, err) in zip(children, results):
        assert "OperationalError" not in err and "Traceback" not in err, err[-3000:]
        assert child.returncode == 0, err[-3000:]
    # Each summary describes its own folder's files.
    assert "files: 2 in " + str(tmp_path / "e0") in results[0][0]
    assert "files: 1 in " + str(tmp_path / "e1") in results[1][0]


@pytest.mark.slow
def test_many_processes_opening_a_fresh_instance_at_once_all_succeed(tmp_path):
    """The lock itself: six processes, imports done, released at the same instant onto a fresh instance."""
    import time

    home = home_at(tmp_path / "home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MICROTRIALS_", "DAGSTER_"))}
    env["DAGSTER_HOME"] = str(home)
    go = tmp_path / "go"
    code = ("import os, sys, time, pathlib, dagster; from pipelines import launch; "
            "home = pathlib.Path(os.environ['DAGSTER_HOME']); os.chdir(home); "
            "pathlib.Path(sys.argv[1] + '.ready').touch(); "
            "exec('while not os.path.exists(sys.argv[2]): time.sleep(0.005)'); "
            "launch.open_instance(home).dispose()")
    children = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"p{n}"), str(go)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(6)]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("p*.ready"))) < len(children) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    for child in children:
        _, err = child.communicate(timeout=120)
        assert child.returncode == 0, err[-2000:]
