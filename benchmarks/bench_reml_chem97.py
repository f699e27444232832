"""Benchmark: the random-slope REML on real A-level data (mlmRev Chem97) against lme4's own time.

    .venv/bin/python benchmarks/bench_reml_chem97.py             # lme4's stored time (tests/fixtures/chem97)
    .venv/bin/python benchmarks/bench_reml_chem97.py --rerun-lme4  # also time lme4 now (needs Rscript + lme4)

31,022 pupils in 2,410 schools (score ~ arm + gcsescore + (1 + arm | school), arm assigned by
alternating pupils within schools; and the same with female as the "arm", a genuinely varying
effect). The pupils go into the warehouse's ``pupils`` table and the timed path is the one the
pipeline runs: ``reml.school_stats`` (sql/matched_cells.sql in DuckDB) then ``reml.fit_reml``.
Prints the median of 7 runs, lme4's median (3 runs of ``lmer`` with its default control, stored by
benchmarks/r/chem97_lme4.R) and the ratio, and how far the estimates are from lme4's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from microtrials.ingest import warehouse
from microtrials.stats.models import ARM, BASELINE
from microtrials.stats.reml import fit_reml, school_stats

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "chem97"
R_SCRIPT = ROOT / "benchmarks" / "r" / "chem97_lme4.R"
R_TIMER = """suppressMessages({library(lme4)})
d <- read.csv(gzfile("%s"), colClasses = c(school = "character"))
for (f in c("arm", "female")) {
  d$t <- d[[f]]
  s <- sapply(1:3, function(i) system.time(lmer(score ~ t + gcsescore + (1 + t | school), data = d)))
  cat(f, median(s["elapsed", ]), median(s["user.self", ] + s["sys.self", ]), "\\n")
}
"""


def load(con, pupils: pd.DataFrame, arm: str) -> str:
    """Insert Chem97 as one trial of the warehouse (intervention named after the arm column)."""
    name = f"Chem97 ({arm})"
    frame = pd.DataFrame({
        "school_urn": pupils["school"], "pupil_key": [f"k{i}" for i in range(len(pupils))],
        "intervention": name, "outcome_measure": "A-level chemistry score",
        "arm": np.where(pupils[arm] == 1, "intervention", "control"),
        "outcome": pupils["score"].astype(float), "baseline": pupils["gcsescore"].astype(float),
        "source_file": pupils["school"] + ".csv", "source_line": np.arange(len(pupils), dtype=np.int32) + 2,
        "delivery_id": "chem97",
    })
    con.register("frame", frame)
    con.execute("INSERT INTO pupils BY NAME SELECT * FROM frame")
    con.unregister("frame")
    return name


def time_ours(con, name: str, runs: int = 7) -> dict[str, list[float]]:
    """Elapsed and CPU seconds of (a) the SQL statistics + random-slope fit and (b) the fit alone."""
    out: dict[str, list[float]] = {"path": [], "path_cpu": [], "fit": [], "fit_cpu": []}
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        stats = school_stats(con, name, "A-level chemistry score", use_baseline=True)
        fit_wall, fit_cpu = time.perf_counter(), time.process_time()
        fit = fit_reml(stats, [ARM, BASELINE], random_slope=True)
        end_wall, end_cpu = time.perf_counter(), time.process_time()
        out["path"].append(end_wall - wall)
        out["path_cpu"].append(end_cpu - cpu)
        out["fit"].append(end_wall - fit_wall)
        out["fit_cpu"].append(end_cpu - fit_cpu)
    out["last"] = fit  # type: ignore[assignment]
    return out


def rerun_lme4() -> dict[str, tuple[float, float]]:
    """lme4's median elapsed and CPU seconds now, per arm column (empty when R or lme4 is not there)."""
    if shutil.which("Rscript") is None:
        print("Rscript not found: using lme4's stored times")
        return {}
    script = R_TIMER % (FIXTURE / "pupils.csv.gz")
    done = subprocess.run(["Rscript", "-e", script], capture_output=True, text=True, check=False)
    if done.returncode:
        print(f"lme4 could not be timed now: {done.stderr.strip()[:200]}")
        return {}
    return {line.split()[0]: (float(line.split()[1]), float(line.split()[2]))
            for line in done.stdout.splitlines() if line.strip()}


def report(arm: str, timed: dict[str, list[float]], stored: dict, live: tuple[float, float] | None) -> None:
    """Print our medians, lme4's (stored, and timed now when asked) and the ratios."""
    med = {k: statistics.median(v) for k, v in timed.items()}
    print(f"\n{arm}: score ~ {arm} + gcsescore + (1 + {arm} | school), REML; medians of {len(timed['fit'])} runs")
    print(f"  microtrials fit_reml from the per-school statistics: {med['fit']:.3f} s elapsed, {med['fit_cpu']:.3f} s CPU")
    print(f"  microtrials SQL statistics + fit_reml:               {med['path']:.3f} s elapsed, {med['path_cpu']:.3f} s CPU")
    theirs = [("stored", stored["seconds_median"], stored.get("cpu_seconds_median"))]
    if live is not None:
        theirs.append(("timed now", *live))
    for label, wall, cpu in theirs:
        line = f"  lme4 lmer ({label}, default control): {wall:.3f} s elapsed"
        line += f", {cpu:.3f} s CPU" if cpu else ""
        print(line)
        print(f"    ratio, elapsed: {wall / med['fit']:,.0f}x (fit), {wall / med['path']:,.0f}x (SQL + fit)"
              + (f"; CPU: {cpu / med['fit_cpu']:,.0f}x (fit), {cpu / med['path_cpu']:,.0f}x (SQL + fit)" if cpu else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rerun-lme4", action="store_true", help="time lme4 now as well (needs Rscript + lme4)")
    args = parser.parse_args()
    lme4 = json.loads((FIXTURE / "lme4.json").read_text())
    pupils = pd.read_csv(FIXTURE / "pupils.csv.gz", dtype={"school": str})
    live = rerun_lme4() if args.rerun_lme4 else {}
    print(f"Chem97: {len(pupils):,} pupils, {pupils['school'].nunique():,} schools; lme4 stored by {lme4['made_by']}")
    with tempfile.TemporaryDirectory(prefix="bench_chem97_") as tmp:
        con = warehouse.connect(Path(tmp) / "bench.duckdb")
        for arm in ("arm", "female"):
            timed = time_ours(con, load(con, pupils, arm))
            fit = timed.pop("last")
            report(arm, timed, lme4[arm], live.get(arm))
            tight = lme4[arm]["tight"]
            print(f"  beta {fit.params[ARM]:.10f} (lme4 tight {tight['fixef'][arm]:.10f}; "
                  f"diff {fit.params[ARM] - tight['fixef'][arm]:+.1e}, {abs(fit.params[ARM] - tight['fixef'][arm]) / tight['se'][arm]:.1e} SE)")
            print(f"  SE   {fit.bse[ARM]:.10f} (lme4 tight {tight['se'][arm]:.10f}; rel {fit.bse[ARM] / tight['se'][arm] - 1:+.1e})")
            print(f"  slope SD {fit.sd_slope:.8f} (lme4 tight {tight['var_slope'] ** 0.5:.8f}); REML criterion "
                  f"{-2 * fit.loglik_reml:.6f} (lme4 tight {tight['reml_criterion']:.6f}, default "
                  f"{lme4[arm]['default']['reml_criterion']:.6f}); converged {fit.converged}")
        con.close()


if __name__ == "__main__":
    main()
