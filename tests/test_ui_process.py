"""`microtrials ui` as a process: a busy port is one line and exit 1; SIGTERM or SIGINT leave no process behind."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from microtrials.cli import descendants
from tests.conftest import REPO_ROOT
from tests.helpers.servers import free_port, wait_until

MICROTRIALS = Path(sys.executable).with_name("microtrials")


def environment(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    (tmp_path / "extracts").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MICROTRIALS_", "DAGSTER_"))}
    env.update(DAGSTER_HOME=str(home), MICROTRIALS_PUPIL_KEY="ui-test-key-not-secret-9a4c1e7b2d5f8036",
               MICROTRIALS_EXTRACTS=str(tmp_path / "extracts"), MICROTRIALS_OUT=str(tmp_path / "out"),
               MICROTRIALS_DB=str(tmp_path / "warehouse.duckdb"))
    return env


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_a_busy_port_is_one_line_and_exit_1(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        done = subprocess.run([str(MICROTRIALS), "ui", "--port", str(port)], env=environment(tmp_path),
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert f"port {port} on 127.0.0.1 is already in use" in line and f"--port {port + 1}" in line
    assert time.monotonic() - started < 30


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_webserver_daemon_and_children_within_10_s(tmp_path, sig):
    port = free_port()
    log = open(tmp_path / "ui.log", "w")
    ui = subprocess.Popen([str(MICROTRIALS), "ui", "--port", str(port)], env=environment(tmp_path),
                          stdout=log, stderr=subprocess.STDOUT)
    try:
        def answering():
            assert ui.poll() is None, (tmp_path / "ui.log").read_text()[-3000:]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as response:
                return response.status == 200

        wait_until(answering, timeout=180, what="the Dagster UI to answer")
        # The webserver, the daemon and the code server all run below `microtrials ui`.
        tree = wait_until(lambda: (lambda t: t if len(t) >= 3 else None)(descendants(ui.pid)), timeout=60,
                          what="dagster dev's processes")
        stopped = time.monotonic()
        os.kill(ui.pid, sig)
        ui.wait(timeout=15)
        assert ui.returncode == 0
        left = wait_until(lambda: not any(alive(p) for p in tree) or None, timeout=10, what="every process to end",
                          interval=0.2)
        assert left
        assert time.monotonic() - stopped < 10, f"took {time.monotonic() - stopped:.1f} s"
    finally:
        if ui.poll() is None:
            ui.kill()
        for pid in descendants(ui.pid):
            os.kill(pid, signal.SIGKILL)
