"""`microtrials run` as a subprocess on a throwaway DAGSTER_HOME, for the tests that run the command itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers.extracts import REPO_ROOT

MICROTRIALS = Path(sys.executable).with_name("microtrials")


def run_cli(tmp_path: Path, extracts: Path, key: str | None) -> subprocess.CompletedProcess:
    """`microtrials run` with DAGSTER_HOME = tmp/home holding a copy of the repo's dagster.yaml
    (its relative storage paths then land under tmp/home, not in the repository)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MICROTRIALS_", "DAGSTER_"))}
    env["DAGSTER_HOME"] = str(home)
    if key is not None:
        env["MICROTRIALS_PUPIL_KEY"] = key
    command = [str(MICROTRIALS), "run", "--extracts", str(extracts), "--out", str(tmp_path / "out"),
               "--db", str(tmp_path / "warehouse.duckdb")]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
