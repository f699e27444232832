"""Resources: where the extracts, the warehouse and the publication live."""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource

from microtrials import workspace
from microtrials.ingest import warehouse

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EXTRACTS = REPO_ROOT / "data" / "extracts"
DEFAULT_OUT = REPO_ROOT / "data" / "published"
DEFAULT_DB = REPO_ROOT / "data" / "warehouse.duckdb"
DEFAULT_FEEDBACK = REPO_ROOT / "data" / "feedback"


class Settings(dg.ConfigurableResource):
    """Folders the pipeline reads from and publishes to."""

    extracts_dir: str
    out_dir: str
    # Private "what to fix" files per school; "" means a `feedback` folder beside the published one.
    feedback_dir: str = ""
    # The trial registry (--trials FILE / MICROTRIALS_TRIALS); "" means <extracts>/../trials.csv.
    trials_file: str = ""
    # The officer's workspace (microtrials.toml's folder; MICROTRIALS_WORKSPACE); "" for the bundled demo.
    workspace_dir: str = ""

    @property
    def extracts(self) -> Path:
        return Path(self.extracts_dir)

    @property
    def out(self) -> Path:
        return Path(self.out_dir)

    @property
    def trials(self) -> Path:
        """The registry file: trials_file, else ``<extracts>/../trials.csv`` (microtrials.ingest.registry.registry_path)."""
        from microtrials.ingest.registry import registry_path

        return registry_path(self.extracts, self.trials_file or None, environ={})

    @property
    def feedback(self) -> Path:
        return Path(self.feedback_dir) if self.feedback_dir else self.out.parent / "feedback"

    @property
    def demo(self) -> bool:
        """Whether this is the bundled demo (no workspace, the demo's extracts), not an officer's workspace."""
        return not self.workspace_dir and self.extracts.resolve() == DEFAULT_EXTRACTS.resolve()


class Warehouse(DuckDBResource):
    """The DuckDB warehouse file (dagster-duckdb's resource: ``database``, ``connection_config``), opened the
    microtrials way: the schema applied to a writing connection, read-only connections for readers, and
    waiting while another run holds the single-writer lock, with one plain line if it never frees.

    (DuckDBResource's own ``get_connection`` opens read-write only, applies no schema and, after its
    retries, raises DuckDB's raw lock error; so both entry points here go through
    ``microtrials.ingest.warehouse``.)
    """

    @property
    def db_path(self) -> str:
        return self.database

    def connect(self, read_only: bool = False) -> duckdb.DuckDBPyConnection:
        """A connection (a context manager that closes it); writers wait for the lock and get the schema."""
        if read_only:
            return warehouse.connect(self.database, read_only=True, config=self.connection_config)
        con = warehouse.connect_with_retry(self.database, config=self.connection_config)
        _test_hook(con)
        return con

    @contextlib.contextmanager
    def get_connection(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """DuckDBResource's entry point, as :meth:`connect`."""
        con = self.connect(read_only=read_only)
        try:
            yield con
        finally:
            con.close()


# Test hook, for the crash and full-disk tests only (tests/test_recovery.py): MICROTRIALS_TEST_HOOK
# = "pause:<seconds>" makes every writing connection wait that long once open (a run then sits
# inside its `warehouse` pool slot, holding the lock, until killed), "enospc" makes it fail as a
# full disk does. MICROTRIALS_TEST_HOOK_FILE, when set, is touched first, so a test knows the run
# has reached this point.
TEST_HOOK = "MICROTRIALS_TEST_HOOK"


def _test_hook(con: duckdb.DuckDBPyConnection) -> None:
    hook = os.environ.get(TEST_HOOK, "")
    if not hook:
        return
    marker = os.environ.get(f"{TEST_HOOK}_FILE")
    if marker:
        Path(marker).touch()
    if hook.startswith("pause:"):
        time.sleep(float(hook.split(":", 1)[1]))
    elif hook == "enospc":
        con.close()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(marker or ".").parent))


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources from MICROTRIALS_EXTRACTS / MICROTRIALS_OUT / MICROTRIALS_FEEDBACK / MICROTRIALS_TRIALS /
    MICROTRIALS_DB, else the workspace MICROTRIALS_WORKSPACE names (microtrials.toml), else the bundled
    demo's data/ (the registry: <extracts>/../trials.csv)."""
    ws = workspace.from_environment()
    if ws is None:
        extracts, out, db, feedback_dir, trials = DEFAULT_EXTRACTS, DEFAULT_OUT, DEFAULT_DB, "", ""
    else:
        extracts, out, db, feedback_dir, trials = ws.extracts, ws.published, ws.warehouse, ws.feedback, ws.registry
    return {
        "settings": Settings(
            extracts_dir=os.environ.get("MICROTRIALS_EXTRACTS", str(extracts)),
            out_dir=os.environ.get("MICROTRIALS_OUT", str(out)),
            feedback_dir=os.environ.get("MICROTRIALS_FEEDBACK", str(feedback_dir)),
            trials_file=os.environ.get("MICROTRIALS_TRIALS", str(trials)),
            workspace_dir="" if ws is None else str(ws.root),
        ),
        "warehouse_db": Warehouse(database=os.environ.get("MICROTRIALS_DB", str(db))),
    }
