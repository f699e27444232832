"""`microtrials run` in a subprocess on a DAGSTER_HOME of the test's own, and the folders it reads and writes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers.extracts import REPO_ROOT, SHARED


MICROTRIALS = Path(sys.executable).with_name("microtrials")


KEY = "cli-safety-key-not-secret-5d0c1e9a7b3f4286"


SCHOOLS = ["111601.csv", "111602.csv", "111603.csv", "111604.csv"]


def home_at(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "dagster.yaml", folder / "dagster.yaml")
    return folder


def run(extracts: Path, out: Path, db: Path, home: Path, key: str | None = KEY, *extra: str,
        feedback: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MICROTRIALS_", "DAGSTER_"))}
    env["DAGSTER_HOME"] = str(home)
    if key is not None:
        env["MICROTRIALS_PUPIL_KEY"] = key
    if feedback is not None:
        env["MICROTRIALS_FEEDBACK"] = str(feedback)
    command = [str(MICROTRIALS), "run", "--extracts", str(extracts), "--out", str(out), "--db", str(db), *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)


def some_extracts(folder: Path, names=SCHOOLS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(SHARED / "reference" / "extracts" / name, folder / name)
    return folder


def listing(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
