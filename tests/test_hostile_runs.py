"""Issue 21 points 3 and 6 through `microtrials run`: a registry that cannot be read stops the run
(exit 2) and leaves the last publication; a full disk is one line (exit 1); dead runs leave nothing behind."""

from __future__ import annotations

import errno
import os
import subprocess

import duckdb
import pandas as pd
import pytest

from tests.helpers.cli_safety import KEY, MICROTRIALS, home_at, listing, run, some_extracts

REGISTRY = (
    "intervention,outcome_measure,round,start_date,end_date,schools,aliases\r\n"
    "Reciprocal reading,NGRT standardised score,2025 Autumn,2025-09-01,,111601 111602 111603 111604,RR\r\n"
    "Maths mastery,PUMA standardised score,2025 Autumn,2025-09-01,,111604 111605,\r\n"
)


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le-no-bom-as-binary"])
def test_a_registry_saved_as_utf16_stops_the_run_and_the_last_publication_stays(tmp_path, encoding):
    """Issue 21: trials.csv saved as UTF-16 published an empty evidence table, exit 0."""
    extracts = some_extracts(tmp_path / "extracts")
    (tmp_path / "trials.csv").write_text(REGISTRY, encoding="utf-8")
    home = home_at(tmp_path / "home")
    first = run(extracts, tmp_path / "out", tmp_path / "w.duckdb", home)
    assert first.returncode == 0, first.stderr[-3000:]
    published = listing(tmp_path / "out")
    assert b"Reciprocal reading" in published["evidence_table.csv"]
    data = REGISTRY.encode("utf-16") if encoding == "utf-16" else REGISTRY.encode("utf-16-le")
    (tmp_path / "trials.csv").write_bytes(data)
    second = run(extracts, tmp_path / "out", tmp_path / "w.duckdb", home)
    assert second.returncode == 2, second.stderr[-3000:]
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("microtrials run: trials.csv: the file is "), second.stderr
    assert "CSV UTF-8" in lines[0] and "Traceback" not in second.stderr
    assert listing(tmp_path / "out") == published


# ---- 6. Nothing dropped because a process died; a full disk in one line --------------------------

def test_a_full_disk_while_publishing_leaves_the_last_publication_and_no_staging(tmp_path, monkeypatch):
    from microtrials.publish import publish
    from pipelines.launch import failure_for

    out = tmp_path / "out"
    publish.publish_folder(out, {"evidence_table.csv": "a,b\n1,2\n", "index.html": "<p>first</p>"})
    before = listing(out)
    calls = []

    def full(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    real = publish._write_synced
    monkeypatch.setattr(publish, "_write_synced", full)
    with pytest.raises(OSError) as raised:
        publish.publish_folder(out, {"evidence_table.csv": "a,b\n3,4\n", "index.html": "<p>second</p>"})
    assert listing(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left
    said = failure_for(raised.value).description
    assert said.startswith("the disk is full (") and "the last good publication stays" in said and "\n" not in said


class FullAtCommit:
    """A warehouse connection whose COMMIT fails as DuckDB's does when the disk is full: the
    transaction is gone, so the ROLLBACK that follows would fail with "cannot rollback"."""

    def __init__(self, con):
        self.con = con

    def execute(self, query, *args, **kwargs):
        if query.strip().upper() == "COMMIT":
            self.con.execute("ROLLBACK")
            raise duckdb.IOException('IO Error: Could not write file "w.duckdb.wal": No space left on device')
        return self.con.execute(query, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.con, name)


def test_a_full_disk_at_the_history_append_says_so_not_cannot_rollback(tmp_path):
    """Issue 21: a full disk during the history append printed five stack traces and "cannot rollback"."""
    from datetime import datetime

    from microtrials.publish import history
    from pipelines.launch import failure_for

    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    table = pd.DataFrame({"intervention": ["Reading Boost"], "outcome_measure": ["NGRT"], "effect_size": [0.2]})
    with pytest.raises(duckdb.IOException) as raised:
        history.append_history(FullAtCommit(con), table, datetime(2026, 12, 7, 3))
    assert "cannot rollback" not in str(raised.value)
    assert failure_for(raised.value).description.startswith("the disk is full (")
    assert con.execute("SELECT count(*) FROM evidence_history").fetchone()[0] == 0  # nothing half-written


def test_staging_folders_of_dead_publications_are_removed_by_the_next(tmp_path):
    """Issue 21: a kill -9 during staging left a .staging-* folder that later runs never removed."""
    import sys
    import time

    from microtrials.publish import publish

    out = tmp_path / "out"
    publish.publish_folder(out, {"index.html": "<p>first</p>"})
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            "dead": f".out.staging-{gone.pid}-{publish._HOST}-0123456789ab",
            "dead_old_swap": f".out.old-{gone.pid}-{publish._HOST}-0123456789ac",
            "live": f".out.staging-{live.pid}-{publish._HOST}-0123456789ad",
            "other_machine": f".out.staging-{gone.pid}-elsewhere-0123456789ae",
            "unnamed_old": ".out.staging-0123456789af",
            "not_ours": ".out.staging-by-someone-else",
        }
        for name in names.values():
            (tmp_path / name).mkdir()
            (tmp_path / name / "evidence_table.csv").write_text("half,written\n")
        old = time.time() - publish.STALE_STAGING_SECONDS - 60
        os.utime(tmp_path / names["unnamed_old"], (old, old))
        publish.publish_folder(out, {"index.html": "<p>second</p>"})
        left = {p.name for p in tmp_path.iterdir()}
    finally:
        live.kill()
        live.wait(timeout=10)
    assert left == {"out", names["live"], names["other_machine"], names["not_ours"]}
    assert (out / "index.html").read_text() == "<p>second</p>"


SITECUSTOMIZE = '''
import errno
from microtrials.publish import publish

def _full(path, data):
    raise OSError(errno.ENOSPC, "No space left on device", str(path))

publish._write_synced = _full
'''


@pytest.mark.slow
def test_a_full_disk_during_a_run_is_one_line_exit_1_and_the_last_publication_stays(tmp_path):
    extracts = some_extracts(tmp_path / "extracts")
    home = home_at(tmp_path / "home")
    assert run(extracts, tmp_path / "out", tmp_path / "w.duckdb", home).returncode == 0
    published = listing(tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "sitecustomize.py").write_text(SITECUSTOMIZE)  # every write of the publication fails
    (extracts / "111601.csv").write_text((extracts / "111601.csv").read_text() + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MICROTRIALS_", "DAGSTER_"))}
    env |= {"DAGSTER_HOME": str(home), "MICROTRIALS_PUPIL_KEY": KEY, "PYTHONPATH": str(tmp_path / "full")}
    done = subprocess.run([str(MICROTRIALS), "run", "--extracts", str(extracts), "--out", str(tmp_path / "out"),
                           "--db", str(tmp_path / "w.duckdb")], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("microtrials run failed: evidence_table: the disk is full ("), done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Stack Trace" not in done.stderr and "cannot rollback" not in done.stderr
    assert listing(tmp_path / "out") == published
    assert sorted(p.name for p in tmp_path.iterdir() if "staging" in p.name or "staged" in p.name) == []
