"""Benchmark: load N schools x M pupils into DuckDB, sufficient statistics + REML vs statsmodels MixedLM.

    .venv/bin/python benchmarks/bench_reml.py                   # 1000 schools x 300 pupils
    .venv/bin/python benchmarks/bench_reml.py --schools 20000   # 6 million pupils

Extract CSVs (the contract's columns, one file per school) are written to a temp dir by a child
process, so the peak memory printed (ru_maxrss of this process) covers only what is measured:
loading with DuckDB's read_csv, the real loader (``microtrials.ingest.loading.load_folder``) when asked,
the statistics, the fits and statsmodels (skipped above 1 million rows).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from microtrials.ingest import warehouse
from microtrials.stats.models import ARM, BASELINE, fit_mixedlm
from microtrials.stats.reml import fit_reml, school_stats

INTERVENTION, MEASURE = "Bench reading", "Bench score"
COLUMNS = [
    "school_urn", "pupil_id", "intervention", "outcome_measure", "arm",
    "outcome", "baseline", "fsm", "gender", "year_group", "send",
]
STATSMODELS_MAX_ROWS = 1_000_000

# DuckDB reads the glob of extracts straight into the schema's pupils table (dummy pupil key:
# md5 of the id; the line number is the row's position in its file + 1 for the header).
LOAD_SQL = """
INSERT INTO pupils (school_urn, pupil_key, intervention, outcome_measure, arm, outcome, baseline, fsm,
                    gender, year_group, send, source_file, source_line, delivery_id)
SELECT
    school_urn,
    md5(pupil_id),
    intervention,
    outcome_measure,
    lower(arm),
    outcome,
    baseline,
    CASE fsm WHEN 'Y' THEN TRUE WHEN 'N' THEN FALSE END,
    gender,
    year_group,
    CASE send WHEN 'Y' THEN TRUE WHEN 'N' THEN FALSE END,
    filename,
    (row_number() OVER (PARTITION BY filename) + 1)::INTEGER,
    'bench'
FROM read_csv($glob, header = true, filename = true, columns = {
    'school_urn': 'VARCHAR', 'pupil_id': 'VARCHAR', 'intervention': 'VARCHAR',
    'outcome_measure': 'VARCHAR', 'arm': 'VARCHAR', 'outcome': 'DOUBLE', 'baseline': 'DOUBLE',
    'fsm': 'VARCHAR', 'gender': 'VARCHAR', 'year_group': 'INTEGER', 'send': 'VARCHAR'})
"""


def generate(folder: Path, schools: int, pupils: int, seed: int = 1) -> None:
    """Write one extract CSV per school: outcome = 30 + 0.7 baseline + (2 + s_j) arm + u_j + e."""
    rng = np.random.default_rng(seed)
    chunk = 500
    for first in range(0, schools, chunk):
        count = min(chunk, schools - first)
        school = np.repeat(np.arange(first, first + count), pupils)
        rows = len(school)
        arm = rng.random(rows) < 0.5
        baseline = np.round(rng.normal(100, 15, rows))
        u = rng.normal(0, 5, schools)[school]
        slope = rng.normal(0, 2, schools)[school]
        outcome = np.round(30 + 0.7 * baseline + (2 + slope) * arm + u + rng.normal(0, 10, rows))
        frame = pd.DataFrame(
            {
                "school_urn": (100000 + school).astype(str),
                "pupil_id": [f"P{i}" for i in range(rows)],
                "intervention": INTERVENTION,
                "outcome_measure": MEASURE,
                "arm": np.where(arm, "intervention", "control"),
                "outcome": np.where(rng.random(rows) < 0.05, np.nan, outcome),
                "baseline": np.where(rng.random(rows) < 0.02, np.nan, baseline),
                "fsm": rng.choice(["Y", "N", ""], size=rows, p=[0.3, 0.65, 0.05]),
                "gender": rng.choice(["F", "M"], size=rows),
                "year_group": rng.integers(3, 7, rows),
                "send": rng.choice(["Y", "N"], size=rows, p=[0.15, 0.85]),
            }
        )
        lines = frame.to_csv(index=False, header=False, float_format="%.0f").splitlines(keepends=True)
        header = ",".join(COLUMNS) + "\n"
        for k in range(count):
            text = header + "".join(lines[k * pupils : (k + 1) * pupils])
            (folder / f"{100000 + first + k}.csv").write_text(text, encoding="utf-8")


def peak_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux ru_maxrss is in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(label: str, work, results: dict[str, float]):
    """Run ``work()``, print and record its wall time."""
    start = time.perf_counter()
    value = work()
    results[label] = time.perf_counter() - start
    print(f"{label:<44} {results[label]:9.2f} s   (peak RSS {peak_mb():7.0f} MB)", flush=True)
    return value


def try_real_loader(folder: Path, workdir: Path, results: dict[str, float]) -> None:
    """Time the project's loader (extracts.load_folder, else loading.load_folder) if it exists."""
    try:
        from microtrials.ingest import extracts

        load_folder = getattr(extracts, "load_folder", None)
        if load_folder is None:
            from microtrials.ingest.loading import load_folder
    except ImportError as error:
        print(f"real loader not available: {error}")
        return
    print(f"real loader: {load_folder.__module__}.load_folder")
    con = warehouse.connect(workdir / "loader.duckdb")
    try:
        timed("load: project loader (load_folder)", lambda: load_folder(con, folder, b"bench-key"), results)
        rows = con.execute("SELECT count(*) FROM pupils").fetchone()[0]
        print(f"  project loader stored {rows:,} pupil rows")
    except Exception as error:  # report, don't hide: the loader is another engineer's work in progress
        print(f"real loader failed: {type(error).__name__}: {error}")
    finally:
        con.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schools", type=int, default=1000)
    parser.add_argument("--pupils", type=int, default=300, help="pupils per school")
    parser.add_argument("--real-loader", choices=["auto", "yes", "no"], default="auto",
                        help="also time microtrials' own loader (auto: only up to 1 million rows)")
    parser.add_argument("--statsmodels-slope", action="store_true", help="also time MixedLM's random slope")
    args = parser.parse_args()
    rows = args.schools * args.pupils
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_reml_") as tmp:
        workdir = Path(tmp)
        folder = workdir / "extracts"
        folder.mkdir()
        start = time.perf_counter()
        child = multiprocessing.get_context("spawn").Process(
            target=generate, args=(folder, args.schools, args.pupils)
        )
        child.start()
        child.join()
        print(f"generated {args.schools:,} files, {rows:,} rows in {time.perf_counter() - start:.1f} s "
              "(child process; not counted)")

        con = warehouse.connect(workdir / "bench.duckdb")
        glob = {"glob": str(folder / "*.csv")}
        timed("load: DuckDB read_csv glob -> pupils", lambda: con.execute(LOAD_SQL, glob), results)
        stored = con.execute("SELECT count(*) FROM pupils").fetchone()[0]
        print(f"  stored {stored:,} pupil rows")

        stats = timed("sufficient statistics (SQL GROUP BY)",
                      lambda: school_stats(con, INTERVENTION, MEASURE, use_baseline=True), results)
        ri = timed("fit_reml random intercept", lambda: fit_reml(stats, [ARM, BASELINE]), results)
        rs = timed("fit_reml random slope", lambda: fit_reml(stats, [ARM, BASELINE], random_slope=True), results)
        print(f"  analysed {stats.n_obs:,} pupils in {len(stats.n):,} schools")
        print(f"  RI: arm {ri.params[ARM]:.5f} (se {ri.bse[ARM]:.5f}) var_school {ri.var_school:.4f} "
              f"var_pupil {ri.var_pupil:.4f} loglik {ri.loglik_reml:.4f} converged {ri.converged}")
        print(f"  RS: arm {rs.params[ARM]:.5f} (se {rs.bse[ARM]:.5f}) sd_slope {rs.sd_slope:.4f} "
              f"loglik {rs.loglik_reml:.4f} converged {rs.converged} singular {rs.singular}")

        if stored <= STATSMODELS_MAX_ROWS:
            frame = timed("fetch analysed rows for statsmodels", lambda: analysed_rows(con), results)
            sm = timed("statsmodels MixedLM random intercept", lambda: fit_mixedlm(frame, [ARM, BASELINE]), results)
            print(f"  MixedLM RI: arm {sm.params[ARM]:.5f} loglik {sm.loglik_reml:.4f} "
                  f"(ours - theirs: {ri.loglik_reml - sm.loglik_reml:+.2e}) {sm.messages}")
            ours = results["sufficient statistics (SQL GROUP BY)"] + results["fit_reml random intercept"]
            print(f"  speed-up, stats + fit_reml vs MixedLM (random intercept): "
                  f"{results['statsmodels MixedLM random intercept'] / ours:,.0f}x")
            if args.statsmodels_slope:
                sms = timed("statsmodels MixedLM random slope",
                            lambda: fit_mixedlm(frame, [ARM, BASELINE], random_slope=True), results)
                print(f"  MixedLM RS: arm {sms.params[ARM]:.5f} loglik {sms.loglik_reml:.4f} "
                      f"(ours - theirs: {rs.loglik_reml - sms.loglik_reml:+.2e})")
                ours = results["sufficient statistics (SQL GROUP BY)"] + results["fit_reml random slope"]
                print(f"  speed-up, stats + fit_reml vs MixedLM (random slope): "
                      f"{results['statsmodels MixedLM random slope'] / ours:,.0f}x")
            del frame
        else:
            print(f"statsmodels skipped: {stored:,} rows > {STATSMODELS_MAX_ROWS:,}")
        con.close()

        total = sum(v for k, v in results.items() if k.startswith(("load: DuckDB", "sufficient", "fit_reml")))
        print(f"load + statistics + both fits: {total:.2f} s; peak RSS {peak_mb():.0f} MB")
        if args.real_loader == "yes" or (args.real_loader == "auto" and rows <= STATSMODELS_MAX_ROWS):
            try_real_loader(folder, workdir, results)
        else:
            print("project loader not timed (use --real-loader yes)")
        print(f"peak RSS at the end: {peak_mb():.0f} MB")


def analysed_rows(con) -> pd.DataFrame:
    """The rows the primary model analyses, coded as fit_mixedlm takes them."""
    frame = con.execute(warehouse.sql("trial_pupils")).df()
    return frame.dropna(subset=["outcome", "baseline"])


if __name__ == "__main__":
    main()
