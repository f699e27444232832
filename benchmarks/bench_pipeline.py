"""Time `microtrials run` end to end through Dagster on N schools x M pupils, beside the loader alone on the same files.

Generates the school files (benchmarks/bench_load.py's generator: two trials, one quarantined row
and one dropped column per school), runs the real `microtrials run` command as a subprocess on a
fresh Dagster instance (a copy of the repository's dagster.yaml in a temporary DAGSTER_HOME) and
prints: wall time, peak memory of the whole process tree (sum of resident memory of
`microtrials run` and its children, sampled every 0.1 s, and the largest single process), Dagster
storage bytes per school, the time of a one-school update afterwards (what the sensor starts for
one changed file), then the loader benchmark (microtrials.loading.load_folder into a fresh
warehouse) on the same files.

Run: .venv/bin/python benchmarks/bench_pipeline.py --schools 400 --pupils 100
     (--generate-only times the generation alone, e.g. for 20,000 schools x 300 pupils)
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO_ROOT))

from bench_load import write_files  # noqa: E402

KEY = "benchmark-key-not-secret-3f6b0d92c7a1e584"


def tree_rss_bytes(pid: int) -> tuple[int, int]:
    """(sum, largest) resident set size in bytes of ``pid`` and every process below it (Linux /proc)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        parents[int(entry.name)] = int(fields.get("PPid", "0").strip() or 0)
        rss[int(entry.name)] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    tree, todo = {pid}, [pid]
    while todo:
        current = todo.pop()
        for child, parent in parents.items():
            if parent == current and child not in tree:
                tree.add(child)
                todo.append(child)
    sizes = [rss.get(p, 0) for p in tree]
    return sum(sizes), max(sizes, default=0)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def run_pipeline(root: Path, extracts: Path) -> dict[str, float]:
    """One `microtrials run` on a fresh instance under ``root``: wall time, memory, storage."""
    home = root / "home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MICROTRIALS_", "DAGSTER_"))}
    env.update(DAGSTER_HOME=str(home), MICROTRIALS_PUPIL_KEY=KEY)
    command = [str(Path(sys.executable).with_name("microtrials")), "run", "--extracts", str(extracts),
               "--out", str(root / "out"), "--db", str(root / "warehouse.duckdb")]
    log = open(root / "run.log", "w")
    started = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    peak_sum = peak_one = 0
    while child.poll() is None:
        total, largest = tree_rss_bytes(child.pid)
        peak_sum, peak_one = max(peak_sum, total), max(peak_one, largest)
        time.sleep(0.1)
    wall = time.perf_counter() - started
    log.close()
    if child.returncode != 0:
        tail = (root / "run.log").read_text()[-3000:]
        raise SystemExit(f"microtrials run failed (exit {child.returncode}):\n{tail}")
    storage = home / "data" / "dagster" / "storage"
    children_max = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {
        "wall": wall,
        "peak_tree": peak_sum,
        "peak_process": max(peak_one, children_max),
        "storage": folder_bytes(storage),
        "warehouse": (root / "warehouse.duckdb").stat().st_size,
    }


def one_school_update(root: Path, extracts: Path) -> float:
    """Seconds for what the sensor starts when one school sends a changed file: `load_and_refresh` for
    that school's partition (load it, refit every trial, republish), run here in process on the same
    instance, as the daemon's run worker would (without the daemon's launch and queue delay)."""
    first = sorted(extracts.glob("*.csv"))[0]
    text = first.read_text(encoding="utf-8").splitlines(keepends=True)
    first.write_text("".join(text[:-1]), encoding="utf-8")  # the school withdrew its last pupil row
    os.environ.update(DAGSTER_HOME=str(root / "home"), MICROTRIALS_PUPIL_KEY=KEY, MICROTRIALS_EXTRACTS=str(extracts),
                      MICROTRIALS_OUT=str(root / "out"), MICROTRIALS_DB=str(root / "warehouse.duckdb"))
    os.chdir(root / "home")
    import dagster as dg

    from pipelines.definitions import defs

    instance = dg.DagsterInstance.get()
    try:
        started = time.perf_counter()
        result = defs.resolve_job_def("load_and_refresh").execute_in_process(
            instance=instance, partition_key=first.stem, raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
        )
        elapsed = time.perf_counter() - started
    finally:
        instance.dispose()
    if not result.success:
        raise SystemExit("the one-school run failed")
    return elapsed


def run_loader(root: Path, extracts: Path) -> float:
    """The loader alone (microtrials.loading.load_folder) on the same files into a fresh warehouse: seconds."""
    from microtrials import loading, warehouse

    con = warehouse.connect(root / "loader.duckdb")
    try:
        started = time.perf_counter()
        loading.load_folder(con, extracts, KEY.encode())
        return time.perf_counter() - started
    finally:
        con.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schools", type=int, default=40)
    parser.add_argument("--pupils", type=int, default=100, help="pupils per school (two trials)")
    parser.add_argument("--generate-only", action="store_true", help="time the generation of the files and stop")
    parser.add_argument("--tmp", type=Path, default=None, help="folder for the files (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        root = Path(tmp)
        extracts = root / "extracts"
        extracts.mkdir()
        started = time.perf_counter()
        rows = write_files(extracts, args.schools, args.pupils)
        generated = time.perf_counter() - started
        size = folder_bytes(extracts)
        print(f"{args.schools:,} schools x {args.pupils:,} pupils = {rows:,} rows ({size / 1e6:,.0f} MB) "
              f"generated in {generated:.1f} s")
        if args.generate_only:
            return 0
        figures = run_pipeline(root, extracts)
        one_school = one_school_update(root, extracts)
        loader = run_loader(root, extracts)
    mb = 1024 * 1024
    print(f"microtrials run end to end: {figures['wall']:.1f} s")
    print(f"peak memory: {figures['peak_tree'] / mb:,.0f} MB for the process tree "
          f"(largest single process {figures['peak_process'] / mb:,.0f} MB)")
    print(f"Dagster storage: {figures['storage'] / 1e6:,.1f} MB = {figures['storage'] / args.schools / 1024:,.1f} KB "
          f"per school; warehouse {figures['warehouse'] / 1e6:,.0f} MB")
    print(f"one changed school file afterwards (the sensor's load_and_refresh run for its partition, in "
          f"process, without the daemon's launch): {one_school:.1f} s")
    print(f"loader alone on the same files: {loader:.1f} s "
          f"(microtrials run = {figures['wall'] / loader:.1f} x the loader)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
