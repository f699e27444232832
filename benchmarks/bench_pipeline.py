"""Time `microtrials run` end to end on N schools x M pupils, with SQLite and with PostgreSQL as Dagster's storage.

For each size the school files are generated once (benchmarks/bench_load.py's generator: two trials,
one quarantined row and one dropped column per school). For each storage, on a fresh DAGSTER_HOME
(a copy of the repository's dagster.yaml; for PostgreSQL with the storage block README "Shared
deployment (PostgreSQL)" documents, on a throwaway cluster started as the tests start theirs) and a
fresh warehouse, it prints:

- the first `microtrials run` (every school new): wall time, CPU time (user + system of the process
  tree), peak memory of the process tree (sum of resident memory, sampled every 0.1 s), Dagster
  storage per school;
- with --updates (the default up to 1,000 schools): the same command again with nothing changed, and
  again after one school's file changed (what an officer runs), and the sensor's run for that one
  school's partition (`load_and_refresh` for one partition, in a fresh process as the daemon's run
  worker is, without the daemon's queue delay), each end to end (process start to exit) and with
  the seconds inside the process split into import, definitions, instance and run;
- the loader alone (microtrials.ingest.loading.load_folder into a fresh warehouse) on the same files.

The machine's load average is printed before each measurement: on a shared machine wall time
stretches with it, CPU time much less.

Run: .venv/bin/python benchmarks/bench_pipeline.py --schools 1000 20000 --pupils 300
     .venv/bin/python benchmarks/bench_pipeline.py --schools 40 --pupils 100 --storage sqlite   (an LA)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO_ROOT))

from bench_load import write_files  # noqa: E402

KEY = "benchmark-key-not-secret-3f6b0d92c7a1e584"
MB = 1024 * 1024
# What docs/deployment.md tells a deployment to set for the daemon and its runs (`microtrials run` sets them itself).
DEPLOYMENT_ENV = {"DAGSTER_EVENT_BATCH_SIZE": "1000", "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "1"}


def tree(pid: int) -> list[int]:
    """``pid`` and every process below it (Linux /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, todo = [pid], [pid]
    while todo:
        current = todo.pop()
        for child, parent in parents.items():
            if parent == current and child not in found:
                found.append(child)
                todo.append(child)
    return found


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return total


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def load() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def timed(command: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> dict[str, float]:
    """Run ``command``; wall seconds, CPU seconds of it and its children, peak resident memory of its tree."""
    before = os.times()
    started = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
        peak = 0
        while child.poll() is None:
            peak = max(peak, rss_bytes(tree(child.pid)))
            time.sleep(0.1)
    wall = time.perf_counter() - started
    after = os.times()
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} failed (exit {child.returncode}):\n{log.read_text()[-3000:]}")
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return {"wall": wall, "cpu": cpu, "peak": peak}


@contextlib.contextmanager
def storage_home(root: Path, storage: str) -> Iterator[tuple[Path, dict[str, str]]]:
    """A fresh DAGSTER_HOME for ``storage`` ('sqlite' or 'postgres') and the environment its processes need."""
    from tests.helpers.servers import postgres_server, readme_storage_block, write_instance_yaml

    home = root / f"home-{storage}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MICROTRIALS_", "DAGSTER_"))}
    env.update(DAGSTER_HOME=str(home), MICROTRIALS_PUPIL_KEY=KEY)
    if storage == "sqlite":
        home.mkdir()
        shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
        yield home, env
        return
    with postgres_server() as server:
        write_instance_yaml(home, storage=readme_storage_block())
        yield home, env | server.env()


def run_command(root: Path, storage: str, extracts: Path) -> list[str]:
    return [str(Path(sys.executable).with_name("microtrials")), "run", "--extracts", str(extracts),
            "--out", str(root / f"out-{storage}"), "--db", str(root / f"warehouse-{storage}.duckdb")]


def one_partition(urn: str) -> None:
    """(In a child process) the sensor's run for one school's partition; prints the seconds of each part as JSON."""
    started = time.perf_counter()
    import dagster as dg

    imported = time.perf_counter()
    from pipelines.definitions import defs

    job = defs.resolve_job_def("load_and_refresh")
    defined = time.perf_counter()
    instance = dg.DagsterInstance.get()
    instance.get_runs(limit=1)
    opened = time.perf_counter()
    try:
        result = job.execute_in_process(instance=instance, partition_key=urn, raise_on_error=False,
                                        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}})
    finally:
        instance.dispose()
    done = time.perf_counter()
    print(json.dumps({"import": imported - started, "definitions": defined - imported, "instance": opened - defined,
                      "run": done - opened, "success": result.success}))


def updates(root: Path, storage: str, extracts: Path, home: Path, env: dict[str, str]) -> None:
    """Nothing changed, one school changed (`microtrials run`), and the one-partition run."""
    command = run_command(root, storage, extracts)
    same = timed(command, env, root / f"same-{storage}.log")
    print(f"  nothing changed, `microtrials run` again: {same['wall']:.1f} s wall, {same['cpu']:.1f} s CPU ({load()})")
    first = sorted(extracts.glob("*.csv"))[0]
    lines = first.read_text(encoding="utf-8").splitlines(keepends=True)
    first.write_text("".join(lines[:-1]), encoding="utf-8")  # the school withdrew its last pupil row
    changed = timed(command, env, root / f"changed-{storage}.log")
    print(f"  one school changed, `microtrials run`: {changed['wall']:.1f} s wall, {changed['cpu']:.1f} s CPU")
    first.write_text("".join(lines[:-2]), encoding="utf-8")  # and another row: the sensor's one-school run
    child_env = env | {"MICROTRIALS_EXTRACTS": str(extracts), "MICROTRIALS_OUT": str(root / f"out-{storage}"),
                       "MICROTRIALS_DB": str(root / f"warehouse-{storage}.duckdb"), **DEPLOYMENT_ENV}
    log = root / f"partition-{storage}.log"
    one = timed([sys.executable, __file__, "--one-partition", first.stem], child_env | {"PYTHONUNBUFFERED": "1"}, log,
                cwd=home)
    parts = json.loads(log.read_text().strip().splitlines()[-1])
    split = ", ".join(f"{name} {parts[name]:.1f} s" for name in ("import", "definitions", "instance", "run"))
    print(f"  one school's partition (the sensor's run, fresh process): {one['wall']:.1f} s wall, {one['cpu']:.1f} s "
          f"CPU; inside: {split}")


def measure(root: Path, storage: str, extracts: Path, schools: int, with_updates: bool) -> None:
    with storage_home(root, storage) as (home, env):
        print(f" {storage}: ({load()})")
        first = timed(run_command(root, storage, extracts), env, root / f"run-{storage}.log")
        stored = folder_bytes(home / "data" / "dagster" / "storage") if storage == "sqlite" else None
        where = (f"; Dagster storage {stored / schools / 1024:,.1f} KB per school" if stored is not None
                 else "; Dagster storage in PostgreSQL")
        print(f"  first `microtrials run`: {first['wall']:.1f} s wall, {first['cpu']:.1f} s CPU, peak memory "
              f"{first['peak'] / MB:,.0f} MB (microtrials' process tree{', not the PostgreSQL server' if stored is None else ''})"
              f"{where}")
        if with_updates:
            updates(root, storage, extracts, home, env)


def run_loader(root: Path, extracts: Path) -> float:
    """The loader alone (microtrials.ingest.loading.load_folder) on the same files into a fresh warehouse: seconds."""
    from microtrials.ingest import loading
    from microtrials.ingest import warehouse

    con = warehouse.connect(root / "loader.duckdb")
    try:
        started = time.perf_counter()
        loading.load_folder(con, extracts, KEY.encode())
        return time.perf_counter() - started
    finally:
        con.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schools", type=int, nargs="+", default=[40])
    parser.add_argument("--pupils", type=int, default=100, help="pupils per school (two trials)")
    parser.add_argument("--storage", nargs="+", choices=["sqlite", "postgres"], default=["sqlite", "postgres"])
    parser.add_argument("--updates", choices=["auto", "yes", "no"], default="auto",
                        help="also time a second run, a one-school change and a one-partition run (auto: up to 1,000 schools)")
    parser.add_argument("--no-loader", action="store_true", help="skip the loader-alone figure")
    parser.add_argument("--tmp", type=Path, default=None, help="folder for the files (default: a temporary one)")
    parser.add_argument("--one-partition", metavar="URN", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one_partition:
        one_partition(args.one_partition)
        return 0
    print(f"{os.cpu_count()} CPUs, {load()}")
    for schools in args.schools:
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            root = Path(tmp)
            extracts = root / "extracts"
            extracts.mkdir()
            started = time.perf_counter()
            rows = write_files(extracts, schools, args.pupils)
            print(f"{schools:,} schools x {args.pupils:,} pupils = {rows:,} rows ({folder_bytes(extracts) / 1e6:,.0f} MB, "
                  f"generated in {time.perf_counter() - started:.1f} s)")
            with_updates = args.updates == "yes" or (args.updates == "auto" and schools <= 1000)
            for storage in args.storage:
                measure(root, storage, extracts, schools, with_updates)
            if not args.no_loader:
                print(f" loader alone on the same files: {run_loader(root, extracts):.1f} s ({load()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
