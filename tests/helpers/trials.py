"""Simulated trials and a warehouse holding them, for the statistics and trial-store tests."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from microtrials.ingest import warehouse


def simulate(trial: str, schools: int, pupils: int, seed: int, *, sd_school: float = 5.0, effect: float = 3.0,
             baseline: bool = True, measure: str = "Score") -> pd.DataFrame:
    """One simulated trial's analysed pupils: ``schools`` x ``pupils``, alternate arms, random school effects."""
    rng = np.random.default_rng(seed)
    school = np.repeat(np.arange(schools), pupils)
    arm = np.tile(np.arange(pupils) % 2, schools).astype(float)
    base = rng.normal(100, 15, len(school))
    u = rng.normal(0, sd_school, schools)
    y = 20 + (0.7 * base if baseline else 0) + effect * arm + u[school] + rng.normal(0, 10, len(school))
    return pd.DataFrame({
        "intervention": trial, "outcome_measure": measure, "school_urn": [str(100000 + s) for s in school],
        "arm": arm, "outcome": y, "baseline": base if baseline else np.nan, "fsm": np.nan,
    })


def pupils_table(frame: pd.DataFrame) -> pd.DataFrame:
    """A trial frame shaped as the warehouse's ``pupils`` table."""
    n = len(frame)
    return pd.DataFrame({
        "school_urn": frame["school_urn"].astype(str),
        "pupil_key": [f"k{i}" for i in range(n)],
        "intervention": frame["intervention"],
        "outcome_measure": frame["outcome_measure"],
        "arm": np.where(frame["arm"] == 1, "intervention", "control"),
        "outcome": frame["outcome"].astype(float),
        "baseline": frame["baseline"].astype(float),
        "fsm": frame["fsm"].map({1.0: True, 0.0: False}).astype("boolean"),
        "gender": None,
        "year_group": pd.array([pd.NA] * n, dtype="Int32"),
        "send": pd.array([pd.NA] * n, dtype="boolean"),
        "source_file": frame["school_urn"].astype(str) + ".csv",
        "source_line": np.arange(n, dtype=np.int32) + 2,
        "delivery_id": "test",
    })


def warehouse_with(tmp_path: Path, *frames: pd.DataFrame) -> duckdb.DuckDBPyConnection:
    """A warehouse in ``tmp_path`` whose ``pupils`` table holds ``frames`` (an open connection)."""
    con = warehouse.connect(tmp_path / "warehouse.duckdb")
    table = pupils_table(pd.concat(frames, ignore_index=True))
    con.register("frame", table)
    con.execute("INSERT INTO pupils BY NAME SELECT * FROM frame")
    con.unregister("frame")
    return con
