"""Load 1,000 school files of 300 pupils each into a fresh warehouse; print rows per second and peak memory.

Run: .venv/bin/python benchmarks/bench_load.py [--files 1000] [--rows 300]
(``--schools`` and ``--pupils`` are the same options by their older names.)
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

from microtrials.ingest import loading
from microtrials.ingest import warehouse

HEADER = "school_urn,pupil_id,intervention,outcome_measure,arm,outcome,baseline,fsm,gender,year_group,send,pupil_name\n"
TRIALS = [("Reciprocal reading", "NGRT standardised score"), ("Maths mastery", "PUMA")]


def write_files(folder: Path, schools: int, pupils: int, seed: int = 1) -> int:
    """One file per school: ``pupils`` rows over two trials, a few bad rows, an extra column to drop."""
    rng = random.Random(seed)
    rows = 0
    for s in range(schools):
        urn = f"{100000 + s:06d}"
        lines = [HEADER]
        for p in range(pupils):
            intervention, measure = TRIALS[p % 2]
            arm = "intervention" if rng.random() < 0.5 else "control"
            baseline = rng.gauss(100, 15)
            outcome = "" if rng.random() < 0.1 else f"{baseline * 0.6 + rng.gauss(40, 10):.1f}"
            if p == 7:
                arm = "treat"  # one quarantined row per school
            lines.append(
                f"{urn},P{urn}{p:04d},{intervention},{measure},{arm},{outcome},{baseline:.1f},"
                f"{'YN'[p % 2]},{'FM'[p % 3 % 2]},{p % 7},N,Name {p}\n"
            )
            rows += 1
        (folder / f"{urn}.csv").write_text("".join(lines), encoding="utf-8")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", "--schools", dest="schools", type=int, default=1000, help="files (one per school)")
    parser.add_argument("--rows", "--pupils", dest="pupils", type=int, default=300, help="pupil rows per file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "extracts"
        folder.mkdir()
        rows = write_files(folder, args.schools, args.pupils)
        con = warehouse.connect_with_retry(Path(tmp) / "warehouse.duckdb")
        started = time.perf_counter()
        reports = loading.load_folder(con, folder, b"benchmark-key")
        first = time.perf_counter() - started
        started = time.perf_counter()
        again = loading.load_folder(con, folder, b"benchmark-key")
        second = time.perf_counter() - started
        stored = con.execute("SELECT count(*) FROM pupils").fetchall()[0][0]
        con.close()
    unit = 1024 if sys.platform != "darwin" else 1024 * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / unit
    # The loader reads and validates a long list of files in worker processes: the largest of them.
    peak_worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / unit
    loaded = sum(r.rows_loaded for r in reports)
    print(f"files: {len(reports)}  rows read: {rows:,}  loaded: {loaded:,}  stored: {stored:,}")
    print(f"first load: {first:.1f} s  = {rows / first:,.0f} rows/s  ({first / len(reports) * 1000:.1f} ms per file)")
    print(f"reload of the same files (all 'unchanged': {all(r.status == 'unchanged' for r in again)}): "
          f"{second:.1f} s = {rows / second:,.0f} rows/s")
    print(f"peak memory (max RSS): {peak:,.0f} MB in this process, {peak_worker:,.0f} MB in the largest worker")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
