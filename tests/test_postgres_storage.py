"""`microtrials run` on an instance whose run/event/schedule storage is PostgreSQL.

Uses Debian's PostgreSQL server (scripts/install.sh installs it when root); skips when absent.
The dagster.yaml is the repository's with the storage block README "Shared deployment
(PostgreSQL)" documents, read from the README itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SHARED
from tests.helpers.servers import (
    POSTGRES_ENV,
    REPO_ROOT,
    VENV_BIN,
    postgres_bindir,
    postgres_server,
    readme_storage_block,
    write_instance_yaml,
)


def test_readme_block_reads_every_setting_from_the_environment():
    db = readme_storage_block()["postgres"]["postgres_db"]
    assert {key: value for key, value in db.items() if key != "scheme"} == {
        key: {"env": variable} for key, variable in POSTGRES_ENV.items()
    }
    # SQLAlchemy 2.1 maps plain "postgresql" to psycopg 3; dagster-postgres ships psycopg2.
    assert db["scheme"] == "postgresql+psycopg2"


@pytest.fixture
def postgres():
    if postgres_bindir() is None:
        reason = ("PostgreSQL server not installed (/usr/lib/postgresql/*/bin/initdb); "
                  "`MICROTRIALS_SYSTEM_PACKAGES=1 bash scripts/install.sh` as root installs it")
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    pytest.importorskip("dagster_postgres", reason="dagster-postgres not installed (pip install -e '.[test]')")
    with postgres_server() as server:
        yield server


@pytest.mark.slow
def test_microtrials_run_records_in_postgres(tmp_path: Path, postgres, monkeypatch):
    home = tmp_path / "dagster_home"
    write_instance_yaml(home, storage=readme_storage_block())
    extracts = tmp_path / "extracts"
    shutil.copytree(SHARED / "reference" / "extracts", extracts)
    out, db = tmp_path / "published", tmp_path / "warehouse.duckdb"
    env = {
        **os.environ,
        **postgres.env(),
        "DAGSTER_HOME": str(home),
        "MICROTRIALS_PUPIL_KEY": os.environ.get("MICROTRIALS_PUPIL_KEY", "test-pupil-key-not-secret-7c1e9a04b25d36f8"),
    }

    result = subprocess.run(
        [str(VENV_BIN / "microtrials"), "run", "--extracts", str(extracts), "--out", str(out), "--db", str(db)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, f"microtrials run failed:\n{result.stdout}\n{result.stderr[-4000:]}"
    assert (out / "evidence_table.csv").exists()

    # The run is in PostgreSQL (read straight from the server) ...
    con = postgres.connect()
    try:
        with con.cursor() as cursor:
            cursor.execute("SELECT run_id, status FROM runs")
            runs = cursor.fetchall()
            cursor.execute("SELECT count(*) FROM event_logs WHERE run_id = %s", (runs[0][0],))
            events = cursor.fetchone()[0]
    finally:
        con.close()
    assert [status for _, status in runs] == ["SUCCESS"]
    assert events > 0
    assert runs[0][0] in result.stdout

    # ... and the instance built from that dagster.yaml reads it back, with the materialisations.
    import dagster as dg

    for key, value in postgres.env().items():
        monkeypatch.setenv(key, value)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        [run] = instance.get_runs()
        assert run.run_id == runs[0][0] and run.is_success
        materialization = instance.get_latest_materialization_event(dg.AssetKey("evidence_table"))
        assert materialization is not None and materialization.run_id == run.run_id

    # Nothing went to SQLite files or to the repository's data/.
    assert not list(home.rglob("*.db")), "run/event storage must not fall back to SQLite"
