"""Test helpers for real servers: free ports, process groups that are always cleaned up, a
throwaway Dagster instance folder, and a throwaway PostgreSQL cluster on loopback."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = REPO_ROOT / ".venv" / "bin"
LOOPBACK = "127.0.0.1"

# Every process a test starts carries this variable (children inherit it), so leftovers are
# found by scanning /proc even after they were re-parented away from the test.
MARKER_VAR = "MICROTRIALS_TEST_MARKER"


# ---- ports, waiting ----------------------------------------------------------------------

def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], object], timeout: float, what: str,
               interval: float = 0.5, alive: Callable[[], None] | None = None) -> object:
    """Poll ``predicate`` until it returns something truthy; ``alive`` may raise to stop early,
    and so may the predicate, by raising AssertionError (other exceptions mean "not yet").

    Raises TimeoutError naming ``what`` (with the predicate's last exception, if any).
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        if alive is not None:
            alive()
        try:
            value = predicate()
            if value:
                return value
        except AssertionError:
            raise  # the predicate saw something that will not get better (a failed run)
        except Exception as exc:  # noqa: BLE001 - the server may not answer yet
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(interval)


# ---- processes ---------------------------------------------------------------------------

@dataclass
class Started:
    """A process started in its own session (so its process group can be signalled as one)."""

    name: str
    popen: subprocess.Popen
    log: Path

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def check_alive(self) -> None:
        """Raise with the log's tail if the process has exited."""
        code = self.popen.poll()
        if code is not None:
            raise RuntimeError(f"{self.name} exited with code {code}; log tail:\n{self.log_tail()}")


@dataclass
class ProcessGroup:
    """Processes started for one test, all tagged with one marker; ``stop`` ends every one."""

    marker: str
    started: list[Started] = field(default_factory=list)

    def start(self, name: str, command: list[str], env: dict[str, str], cwd: Path, log_dir: Path) -> Started:
        log = log_dir / f"{name}.log"
        env = {**env, MARKER_VAR: self.marker}
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        item = Started(name, popen, log)
        self.started.append(item)
        return item

    def leftovers(self) -> list[int]:
        """Live (non-zombie) pids carrying this group's marker."""
        return marked_pids(self.marker)

    def stop(self, timeout: float = 30.0) -> list[int]:
        """SIGTERM every process group, wait up to ``timeout`` s for all marked processes to end,
        then SIGKILL what is left. Returns the pids that had to be killed (empty when all ended
        on SIGTERM)."""
        for item in self.started:
            _signal_group(item.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for item in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                item.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        while self.leftovers() and time.monotonic() < deadline:
            time.sleep(0.2)
        killed = self.leftovers()
        for item in self.started:
            _signal_group(item.popen.pid, signal.SIGKILL)
        for pid in killed:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for item in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                item.popen.wait(timeout=10)
        settle = time.monotonic() + 10  # a SIGKILLed orphan takes a moment to leave /proc
        while self.leftovers() and time.monotonic() < settle:
            time.sleep(0.1)
        return killed


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def marked_pids(marker: str) -> list[int]:
    """Pids of live processes whose environment holds ``MARKER_VAR=marker`` (a /proc scan)."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                state = stat.read().rsplit(b")", 1)[1].split()[0]
            if state in (b"Z", b"X"):
                continue
            with open(f"/proc/{entry}/environ", "rb") as environ:
                if needle in environ.read().split(b"\0"):
                    found.append(int(entry))
        except (OSError, IndexError):
            continue
    return found


# ---- a Dagster instance folder -----------------------------------------------------------

def write_instance_yaml(home: Path, storage: dict | None = None) -> Path:
    """``home/dagster.yaml``: the repository's dagster.yaml with every ``base_dir`` made absolute
    under ``home`` (the repo's are relative to the cwd) and, if given, ``storage`` replaced."""
    config = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())

    def absolute(node: object) -> object:
        if isinstance(node, dict):
            return {
                key: str(home / value) if key == "base_dir" and isinstance(value, str) and not os.path.isabs(value)
                else absolute(value)
                for key, value in node.items()
            }
        if isinstance(node, list):
            return [absolute(item) for item in node]
        return node

    config = absolute(config)
    if storage is not None:
        config["storage"] = storage
    home.mkdir(parents=True, exist_ok=True)
    path = home / "dagster.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# ---- PostgreSQL ----------------------------------------------------------------------------

def postgres_bindir() -> Path | None:
    """Debian's PostgreSQL server binaries (the newest installed major version), if any."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(found[-1]).parent if found else None


def readme_storage_block() -> dict:
    """The `storage:` block README "Shared deployment (PostgreSQL)" tells a deployment to use."""
    import re

    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Shared deployment (PostgreSQL)", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```yaml\n(.*?)```", section, re.DOTALL).group(1)
    return yaml.safe_load(block)["storage"]


# postgres_db setting -> the environment variable README "Shared deployment (PostgreSQL)" reads it from.
POSTGRES_ENV = {
    "username": "DAGSTER_POSTGRES_USER",
    "password": "DAGSTER_POSTGRES_PASSWORD",
    "hostname": "DAGSTER_POSTGRES_HOST",
    "db_name": "DAGSTER_POSTGRES_DB",
    "port": "DAGSTER_POSTGRES_PORT",
}


@dataclass
class Postgres:
    """A running throwaway cluster: connect with these settings."""

    host: str
    port: int
    username: str
    password: str
    db_name: str
    socket_dir: Path

    def env(self) -> dict[str, str]:
        """The variables the documented dagster.yaml block reads (README "Shared deployment")."""
        values = {"username": self.username, "password": self.password, "hostname": self.host,
                  "db_name": self.db_name, "port": str(self.port)}
        return {POSTGRES_ENV[key]: value for key, value in values.items()}

    def connect(self):
        import psycopg2

        return psycopg2.connect(host=self.host, port=self.port, user=self.username,
                                password=self.password, dbname=self.db_name, connect_timeout=10)


@contextlib.contextmanager
def postgres_server(db_name: str = "microtrials", timeout: float = 60.0) -> Iterator[Postgres]:
    """initdb a cluster in a fresh temp folder, serve it on 127.0.0.1:<free port> (and a unix
    socket in that folder), create ``db_name``; stop the server and delete the folder on exit.

    initdb refuses to run as root, so as root the cluster belongs to the ``postgres`` user
    (Debian's package creates it; ``nobody`` otherwise) and every server command runs through
    ``runuser``. Raises FileNotFoundError when no server is installed.
    """
    bindir = postgres_bindir()
    if bindir is None:
        raise FileNotFoundError("no PostgreSQL server under /usr/lib/postgresql/*/bin")
    # Not under pytest's tmp_path: that is private to root, and the server may not run as root.
    root = Path(tempfile.mkdtemp(prefix="microtrials-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    username, password = "microtrials", "microtrials-test-password"
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    as_user: list[str] = []
    if os.geteuid() == 0:
        owner = _first_user("postgres", "nobody")
        record = pwd.getpwnam(owner)
        for path in (root, sockets, pwfile):
            os.chown(path, record.pw_uid, record.pw_gid)
        as_user = ["runuser", "-u", owner, "--"]
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}
    port = free_port()
    log = root / "server.log"
    started = False
    try:
        _run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", username, "--pwfile", str(pwfile),
              "-A", "scram-sha-256", "-E", "UTF8", "--no-sync"], env, timeout)
        options = f"-h {LOOPBACK} -p {port} -k {sockets} -c fsync=off -c full_page_writes=off"
        started = True
        _run([*as_user, str(bindir / "pg_ctl"), "start", "-D", str(data), "-w", "-t", str(int(timeout)),
              "-l", str(log), "-o", options], env, timeout + 10, log)
        server = Postgres(LOOPBACK, port, username, password, db_name, sockets)
        import psycopg2

        admin = psycopg2.connect(host=LOOPBACK, port=port, user=username, password=password,
                                 dbname="postgres", connect_timeout=10)
        try:
            admin.autocommit = True
            with admin.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{db_name}"')
        finally:
            admin.close()
        yield server
    finally:
        if started:
            stopped = subprocess.run([*as_user, str(bindir / "pg_ctl"), "stop", "-D", str(data), "-m", "fast",
                                      "-w", "-t", "30"], env=env, capture_output=True, timeout=60)
            if stopped.returncode != 0:
                _kill_postmaster(data)
        shutil.rmtree(root, ignore_errors=True)


def _first_user(*names: str) -> str:
    for name in names:
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise FileNotFoundError(f"none of the users {names} exists to own the PostgreSQL cluster")


def _run(command: list[str], env: dict[str, str], timeout: float, log: Path | None = None) -> None:
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        server_log = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n"
                           f"{result.stderr}\n{server_log}")


def _kill_postmaster(data: Path) -> None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, signal.SIGKILL)
