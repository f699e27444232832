"""`microtrials plan` as an officer runs it: a subprocess reading the warehouse read-only."""

from __future__ import annotations

import hashlib
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from scipy import stats

MICROTRIALS = Path(sys.executable).with_name("microtrials")

REGISTRY = (
    "intervention,outcome_measure,round,start_date,end_date,schools,aliases\n"
    "Reciprocal reading,NGRT standardised score,2025-26,2025-09-08,2026-07-17,111601 111602 111603,Reciprocal Reading Programme\n"
    "Reciprocal reading,NGRT standardised score,2026-27,2026-09-07,2027-07-16,111601 111604 111605 111606,Reciprocal Reading Programme\n"
)
# One earlier round of Reciprocal reading in the warehouse: the variances its models gave.
EARLIER = {"var_school_unconditional": 30.0, "var_pupil_unconditional": 170.0, "var_pupil": 95.0, "beta": 3.0,
           "pupils_analysed": 540, "attrition_pct": 8.0, "pupils_randomised": 588, "schools": 12}


def plan(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MICROTRIALS_", "DAGSTER_"))}
    command = [str(MICROTRIALS), "plan", *args, "--trials", str(tmp_path / "trials.csv"),
               "--db", str(tmp_path / "warehouse.duckdb")]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def warehouse_with_one_round(tmp_path: Path) -> Path:
    (tmp_path / "trials.csv").write_text(REGISTRY, encoding="utf-8")
    db = tmp_path / "warehouse.duckdb"
    con = duckdb.connect(str(db))
    columns = ", ".join(f"{k} DOUBLE" for k in EARLIER)
    con.execute(f"CREATE TABLE trial_results (intervention VARCHAR, outcome_measure VARCHAR, round VARCHAR, {columns})")
    con.execute("INSERT INTO trial_results VALUES (?, ?, ?, " + ", ".join("?" * len(EARLIER)) + ")",
                ["Reciprocal reading", "NGRT standardised score", "2025-26", *EARLIER.values()])
    con.close()
    return db


@pytest.mark.slow
def test_plan_prints_mdes_strength_and_schools_needed_from_earlier_rounds(tmp_path, warehouse_with_one_round):
    before = hashlib.sha256(warehouse_with_one_round.read_bytes()).hexdigest()
    done = plan(tmp_path, "reciprocal reading programme", "--schools", "10", "--pupils-per-school", "50")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    # Independent calculation (PowerUpR mdes.bira2 with random school effects, omega2 = 0):
    # ICC = 30 / (30 + 170); baseline R^2 = 1 - (95 + 3^2/4) / 170; 8% attrition of 50 pupils;
    # MDES = (t_.975,9 + t_.80,9) sqrt((1 - ICC)(1 - R^2) / (0.25 x 10 x n)).
    icc, r2, n, J = 30 / 200, 1 - (95 + 9 / 4) / 170, 50 * 0.92, 10
    mdes = (stats.t.ppf(0.975, J - 1) + stats.t.ppf(0.80, J - 1)) * math.sqrt((1 - icc) * (1 - r2) / (0.25 * J * n))
    shown = float(re.search(r"\(MDES\): (\d\.\d\d) SD", out).group(1))
    assert shown == pytest.approx(mdes, abs=0.005)
    assert "\nPlan for Reciprocal reading: 10 schools x 50 pupils" in out  # the alias found the registered name
    assert "80% power at 5% two-sided" in out
    assert re.search(r"Evidence strength it would earn: [0-5] of 5", out)
    four, five = re.search(r"strength 4: (\d+) schools; strength 5: (\d+) schools", out).groups()
    assert int(four) <= int(five)
    assert "1 earlier round of Reciprocal reading (ICC 0.15, baseline R² 0.43, 8% attrition)" in out
    assert hashlib.sha256(warehouse_with_one_round.read_bytes()).hexdigest() == before, "the warehouse is only read"


@pytest.mark.slow
def test_unknown_intervention_is_one_plain_error_line(tmp_path, warehouse_with_one_round):
    done = plan(tmp_path, "Reading boost", "--schools", "10")
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("microtrials plan: 'Reading boost' is neither a registered intervention")
    assert "known: Reciprocal reading" in lines[0] and "register it in trials.csv" in lines[0]


@pytest.mark.slow
def test_too_few_schools_and_no_warehouse_are_said_plainly(tmp_path):
    (tmp_path / "trials.csv").write_text(REGISTRY, encoding="utf-8")
    done = plan(tmp_path, "Reciprocal reading", "--schools", "1")
    assert done.returncode == 2 and "plan at least 2 schools" in done.stderr
    done = plan(tmp_path, "Reciprocal reading", "--schools", "8")
    assert done.returncode == 0, done.stderr
    assert "defaults (ICC 0.15" in done.stdout and "No warehouse at" in done.stdout
    assert not (tmp_path / "warehouse.duckdb").exists(), "planning never creates a warehouse"
