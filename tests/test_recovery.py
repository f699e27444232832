"""Runs that die or are stopped never block the next; errors an officer can meet are one plain line.

Each test runs the real `microtrials run` in a subprocess on an instance of its own, paused or
failed at a point it controls through the test hook of pipelines/resources.py
(MICROTRIALS_TEST_HOOK: a writing warehouse connection pauses, or fails as a full disk does).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from tests.conftest import REPO_ROOT, SHARED

MICROTRIALS = Path(sys.executable).with_name("microtrials")


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MICROTRIALS_", "DAGSTER_"))}
    env.update(DAGSTER_HOME=str(home), MICROTRIALS_PUPIL_KEY="recovery-test-key-not-secret-5d2a9c7e41b38f06", **extra)
    return env


def command(tmp_path: Path) -> list[str]:
    return [str(MICROTRIALS), "run", "--extracts", str(tmp_path / "extracts"), "--out", str(tmp_path / "out"),
            "--db", str(tmp_path / "warehouse.duckdb")]


def extracts(tmp_path: Path, schools: int = 25) -> Path:
    folder = tmp_path / "extracts"
    folder.mkdir(exist_ok=True)
    for path in sorted((SHARED / "reference" / "extracts").glob("*.csv"))[:schools]:
        shutil.copy(path, folder / path.name)
    return folder


def start_paused(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """`microtrials run` paused (for 120 s) inside the pupils step, holding the warehouse pool slot."""
    marker = tmp_path / "paused"
    env = environment(tmp_path, MICROTRIALS_TEST_HOOK="pause:120", MICROTRIALS_TEST_HOOK_FILE=str(marker))
    log = open(tmp_path / "paused-run.log", "w")
    child = subprocess.Popen(command(tmp_path), env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert child.poll() is None, (tmp_path / "paused-run.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the run never reached the pause"
        time.sleep(0.2)
    return child, marker


def instance_at(tmp_path: Path, monkeypatch) -> dg.DagsterInstance:
    monkeypatch.chdir(tmp_path / "home")  # the yaml's storage paths are relative to it
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    return dg.DagsterInstance.get()


def pupil_rows(tmp_path: Path) -> int:
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute("SELECT count(*) FROM pupils").fetchall()[0][0]
    finally:
        con.close()


@pytest.mark.slow
def test_a_run_killed_with_sigkill_never_blocks_the_next(tmp_path, monkeypatch):
    extracts(tmp_path, schools=4)
    child, _ = start_paused(tmp_path)
    instance = instance_at(tmp_path, monkeypatch)
    try:
        [run] = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.STARTED
        assert run.run_id in instance.event_log_storage.get_concurrency_run_ids(), "the paused run holds a slot"
    finally:
        instance.dispose()
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)

    started = time.monotonic()
    done = subprocess.run(command(tmp_path), env=environment(tmp_path), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert time.monotonic() - started < 120
    assert f"run {run.run_id} had been left unfinished by a process that is gone" in done.stderr
    instance = instance_at(tmp_path, monkeypatch)
    try:
        statuses = {r.run_id: r.status for r in instance.get_runs()}
        assert statuses[run.run_id] == dg.DagsterRunStatus.FAILURE
        assert sorted(s.value for s in statuses.values()) == ["FAILURE", "SUCCESS"]
        assert not instance.event_log_storage.get_concurrency_run_ids(), "no slot left claimed"
    finally:
        instance.dispose()
    assert pupil_rows(tmp_path) > 0 and (tmp_path / "out" / "evidence_table.csv").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_sigint_stop_a_run_within_10_s_leaving_the_last_good_state(tmp_path, monkeypatch, sig):
    extracts(tmp_path, schools=4)
    first = subprocess.run(command(tmp_path), env=environment(tmp_path), capture_output=True, text=True, timeout=240)
    assert first.returncode == 0, first.stderr[-3000:]
    before_rows = pupil_rows(tmp_path)
    before_table = (tmp_path / "out" / "evidence_table.csv").read_bytes()
    extracts(tmp_path, schools=8)  # four more schools to load

    child, _ = start_paused(tmp_path)
    stopped = time.monotonic()
    os.kill(child.pid, sig)
    child.wait(timeout=10)
    assert time.monotonic() - stopped < 10
    assert child.returncode != 0
    assert "stopped (Ctrl-C or SIGTERM)" in (tmp_path / "paused-run.log").read_text()

    assert pupil_rows(tmp_path) == before_rows
    assert (tmp_path / "out" / "evidence_table.csv").read_bytes() == before_table
    instance = instance_at(tmp_path, monkeypatch)
    try:
        last = instance.get_runs(limit=1)[0]
        assert last.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
        assert not instance.event_log_storage.get_concurrency_run_ids()
    finally:
        instance.dispose()
    again = subprocess.run(command(tmp_path), env=environment(tmp_path), capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    assert pupil_rows(tmp_path) > before_rows


@pytest.mark.slow
def test_a_full_disk_is_one_plain_line_and_nothing_half_written(tmp_path):
    extracts(tmp_path, schools=4)
    first = subprocess.run(command(tmp_path), env=environment(tmp_path), capture_output=True, text=True, timeout=240)
    assert first.returncode == 0, first.stderr[-3000:]
    before_rows = pupil_rows(tmp_path)
    published = {p.relative_to(tmp_path / "out"): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    extracts(tmp_path, schools=8)

    env = environment(tmp_path, MICROTRIALS_TEST_HOOK="enospc")
    done = subprocess.run(command(tmp_path), env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("microtrials run failed: pupils: the disk is full")
    assert "free some space" in last
    assert pupil_rows(tmp_path) == before_rows
    now = {p.relative_to(tmp_path / "out"): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert now == published, "the last good publication stays, byte for byte"


@pytest.mark.slow
def test_dagster_home_missing_or_without_its_yaml_is_refused_in_one_line(tmp_path):
    extracts(tmp_path, schools=1)
    env = environment(tmp_path)
    env["DAGSTER_HOME"] = str(tmp_path / "no-such-folder")
    done = subprocess.run(command(tmp_path), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "is not a folder" in line and "mkdir -p" in line
    (tmp_path / "empty-home").mkdir()
    env["DAGSTER_HOME"] = str(tmp_path / "empty-home")
    done = subprocess.run(command(tmp_path), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "has no dagster.yaml" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "warehouse.duckdb").exists()
    assert not any((tmp_path / "empty-home").iterdir()), "nothing written to the wrong DAGSTER_HOME"


def test_an_unreadable_extracts_folder_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    """As root a chmod 000 folder stays readable, so the listing is made to fail as it would for an officer."""
    from microtrials import cli

    extracts(tmp_path, schools=1)
    env = environment(tmp_path)
    for name in ("MICROTRIALS_EXTRACTS", "MICROTRIALS_OUT", "MICROTRIALS_DB", "MICROTRIALS_NEW_PUPIL_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DAGSTER_HOME", env["DAGSTER_HOME"])
    monkeypatch.chdir(tmp_path)
    real_listdir = os.listdir

    def refuse(path="."):
        if Path(path) == tmp_path / "extracts":
            raise PermissionError(13, "Permission denied", str(path))
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", refuse)
    code = cli.main(["run", "--extracts", str(tmp_path / "extracts"), "--out", str(tmp_path / "out"),
                     "--db", str(tmp_path / "w.duckdb"), "--new-pupil-key"])
    assert code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert f"cannot read the extracts folder {tmp_path / 'extracts'} (Permission denied)" in line
    assert "read access" in line
    assert os.environ["MICROTRIALS_NEW_PUPIL_KEY"] == "1"  # --new-pupil-key reaches the run's environment
    assert not (tmp_path / "out").exists() and not (tmp_path / "w.duckdb").exists()
