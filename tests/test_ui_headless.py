"""End to end without a browser: the real `dagster-webserver` and `dagster-daemon run` on a temp
instance; a new extract dropped into the watched folder is loaded by `extracts_sensor`'s runs,
and the results are read back through the webserver's GraphQL API."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.conftest import SHARED
from tests.helpers.servers import LOOPBACK, VENV_BIN, ProcessGroup, Started, free_port, wait_until, write_instance_yaml

DEFS_MODULE = "pipelines.definitions"
LOCATION = DEFS_MODULE  # `-m MODULE` names the code location after the module
REPOSITORY = "__repository__"  # the repository a dg.Definitions object becomes
SENSOR = "extracts_sensor"
PARTITIONS = "schools"  # the dynamic partitions definition on `pupils`
REFERENCE = SHARED / "reference" / "extracts"
# Arrive while the servers run, into an empty folder: two schools with both trials each, so
# every trial has two schools (one run: the sensor loads adjacent new schools together).
DROPPED = ["111604.csv", "111630.csv"]
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}
SENSOR_SELECTOR = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": SENSOR}

SERVER_TIMEOUT = 120  # webserver answering and the code location loaded (2-core CI, cold imports)
RUNS_TIMEOUT = 180  # the sensor's runs for the dropped extract, through to the evidence table


@dataclass
class Deployment:
    port: int
    extracts: Path
    out: Path
    processes: ProcessGroup
    webserver: Started
    daemon: Started

    def alive(self) -> None:
        self.webserver.check_alive()
        self.daemon.check_alive()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} log tail ---\n{p.log_tail(3000)}" for p in (self.webserver, self.daemon))


def query(client, text: str, variables: dict | None = None) -> dict:
    """A raw GraphQL query through the client's own transport (for what it has no method for)."""
    return client._execute(text, variables)


@pytest.fixture
def deployment(tmp_path: Path):
    home, cwd = tmp_path / "dagster_home", tmp_path / "cwd"
    cwd.mkdir()
    write_instance_yaml(home)
    # Create the storage once before two processes open it: a fresh SQLite instance opened by the
    # webserver and the daemon at the same moment can be stamped twice ("more than one head").
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.get_runs(limit=1)
    extracts, out = tmp_path / "extracts", tmp_path / "published"
    extracts.mkdir()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "MICROTRIALS_EXTRACTS": str(extracts),
        "MICROTRIALS_OUT": str(out),
        "MICROTRIALS_DB": str(tmp_path / "warehouse.duckdb"),
        "MICROTRIALS_PUPIL_KEY": os.environ.get("MICROTRIALS_PUPIL_KEY", "test-pupil-key-not-secret-7c1e9a04b25d36f8"),
        "MICROTRIALS_SENSOR_INTERVAL": "2",
        "DAGSTER_DISABLE_TELEMETRY": "1",
        "PYTHONUNBUFFERED": "1",
    }
    port = free_port()
    processes = ProcessGroup(marker=uuid.uuid4().hex)
    try:
        webserver = processes.start(
            "webserver",
            [str(VENV_BIN / "dagster-webserver"), "-h", LOOPBACK, "-p", str(port), "-m", DEFS_MODULE],
            env, cwd, tmp_path,
        )
        daemon = processes.start("daemon", [str(VENV_BIN / "dagster-daemon"), "run", "-m", DEFS_MODULE],
                                 env, cwd, tmp_path)
        yield Deployment(port, extracts, out, processes, webserver, daemon)
    finally:
        processes.stop(timeout=30)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning:gql")
def test_dropped_extract_runs_through_the_sensor(deployment: Deployment):
    from dagster_graphql import DagsterGraphQLClient

    d = deployment
    phase = _Phases()
    # Only loopback: the client talks to 127.0.0.1:<free port>.
    wait_until(lambda: requests.get(f"http://{LOOPBACK}:{d.port}/server_info", timeout=5).ok,
               SERVER_TIMEOUT, "dagster-webserver to answer", alive=lambda: _alive(d))
    phase("webserver answers")
    client = DagsterGraphQLClient(LOOPBACK, port_number=d.port, timeout=60)
    wait_until(lambda: _location_loaded(client), SERVER_TIMEOUT, f"code location {LOCATION} to load",
               alive=lambda: _alive(d))
    phase("code location loaded")

    sensor = query(client, SENSOR_QUERY, {"selector": SENSOR_SELECTOR})["sensorOrError"]
    assert sensor["__typename"] == "Sensor", sensor
    assert sensor["minIntervalSeconds"] <= 5, "MICROTRIALS_SENSOR_INTERVAL is not honoured"
    if sensor["sensorState"]["status"] != "RUNNING":
        started = query(client, START_SENSOR, {"selector": SENSOR_SELECTOR})["startSensor"]
        assert started["__typename"] == "Sensor", started

    # Drop the extracts only after the sensor has evaluated the (empty) folder once, so they are
    # new to a running sensor.
    wait_until(lambda: _ticks(client, statuses=["SUCCESS", "SKIPPED", "FAILURE"]), RUNS_TIMEOUT,
               f"the first tick of {SENSOR}", alive=lambda: _alive(d))
    phase("first sensor tick")
    dropped_at = time.time()
    for name in DROPPED:
        tmp = d.extracts / f".{name}.partial"  # a dot file: not an extract yet
        shutil.copy(REFERENCE / name, tmp)
        tmp.rename(d.extracts / name)  # appears whole, as a careful upload would
    schools = [Path(name).stem for name in DROPPED]

    try:
        state = wait_until(lambda: _published_after_load(client, schools), RUNS_TIMEOUT,
                           f"schools {schools} loaded and the evidence table published after them",
                           interval=1.0, alive=lambda: _alive(d))
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\nruns: {_runs(client)}\n{d.logs()}") from None
    phase(f"{', '.join(schools)} loaded and published")

    # Every run succeeded, the sensor's included; checked run by run with the client.
    runs = _runs(client)
    from dagster import DagsterRunStatus

    statuses = {run["runId"]: client.get_run_status(run["runId"]) for run in runs}
    assert all(s == DagsterRunStatus.SUCCESS for s in statuses.values()), f"{statuses}\n{d.logs()}"
    sensor_runs = [r for r in runs if {"key": "dagster/sensor_name", "value": SENSOR} in r["tags"]]
    assert sensor_runs, f"no run was launched by {SENSOR}: {runs}"
    assert any(r["creationTime"] >= dropped_at for r in sensor_runs), "no sensor run after the drop"
    failed_ticks = _ticks(client, statuses=["FAILURE"])
    assert not failed_ticks, f"{SENSOR} ticks failed: {failed_ticks}"

    # Each school is a partition of the `schools` dynamic partitions, materialised.
    pupils = state["pupils"]
    dimension_names = {t["dynamicPartitionsDefinitionName"] for t in pupils["partitionDefinition"]["dimensionTypes"]}
    assert pupils["partitionDefinition"]["type"] == "DYNAMIC" and PARTITIONS in dimension_names
    assert set(schools) <= set(pupils["partitionKeys"]), pupils["partitionKeys"]
    assert set(schools) <= set(pupils["assetPartitionStatuses"]["materializedPartitions"])
    assert not pupils["assetPartitionStatuses"]["failedPartitions"]

    # Every asset check ran with the latest materialisation of its asset, and passed.
    checks = _asset_checks(client)
    assert checks, "no asset checks defined"
    assert all(status == "SUCCEEDED" for status in checks.values()), checks

    # The evidence table's latest materialisation carries markdown metadata; the CSV is there.
    evidence = state["evidence_table"]
    markdown = [e for e in evidence["metadataEntries"] if e["__typename"] == "MarkdownMetadataEntry"]
    assert markdown and all(e["mdStr"].strip() for e in markdown), evidence["metadataEntries"]
    assert (d.out / "evidence_table.csv").exists()

    # Shutting down ends every process started, their code servers and run workers included.
    pids = d.processes.leftovers()
    assert len(pids) >= 2, pids
    killed = d.processes.stop(timeout=30)
    phase(f"shut down ({len(pids)} processes; {len(killed)} needed SIGKILL)")
    assert not killed, f"processes {killed} ignored SIGTERM for 30 s"
    assert d.processes.leftovers() == [], "processes left behind after shutdown"
    assert d.webserver.popen.returncode is not None and d.daemon.popen.returncode is not None


@pytest.mark.slow
def test_process_cleanup_leaves_nothing(tmp_path: Path):
    """The helper that stops the servers ends children that left the process group, too."""
    processes = ProcessGroup(marker=uuid.uuid4().hex)
    try:
        # A parent that starts a detached grandchild (own session) and then waits.
        script = ("import os, subprocess, sys, time; "
                  "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True); "
                  "time.sleep(120)")
        processes.start("parent", [str(VENV_BIN / "python"), "-c", script], dict(os.environ), tmp_path, tmp_path)
        wait_until(lambda: len(processes.leftovers()) == 2, 30, "parent and grandchild to start")
    finally:
        killed = processes.stop(timeout=2)
    assert len(killed) == 1, "the detached grandchild needed SIGKILL"
    assert processes.leftovers() == []


class _Phases:
    """Prints how long each phase took (shown with -s, and in the report of a failure)."""

    def __init__(self) -> None:
        self.start = self.last = time.monotonic()

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        print(f"[headless] {name}: +{now - self.last:.1f} s ({now - self.start:.1f} s in all)")
        self.last = now


# ---- GraphQL -------------------------------------------------------------------------------

LOCATIONS = """
query { locationStatusesOrError { __typename
  ... on WorkspaceLocationStatusEntries { entries { name loadStatus } } } }
"""

WORKSPACE_ERRORS = """
query { workspaceOrError { ... on Workspace { locationEntries { name
  locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""

SENSOR_QUERY = """
query ($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) { __typename
  ... on Sensor { name minIntervalSeconds sensorState { status } }
  ... on PythonError { message } } }
"""

START_SENSOR = """
mutation ($selector: SensorSelector!) { startSensor(sensorSelector: $selector) { __typename
  ... on Sensor { sensorState { status } } ... on PythonError { message } } }
"""

TICKS = """
query ($selector: SensorSelector!, $statuses: [InstigationTickStatus!]) {
  sensorOrError(sensorSelector: $selector) { ... on Sensor { sensorState {
    ticks(limit: 20, statuses: $statuses) { status timestamp runIds skipReason error { message } } } } } }
"""

RUNS = """
query { runsOrError(limit: 100) { __typename ... on Runs { results {
  runId status creationTime jobName tags { key value } } } ... on PythonError { message } } }
"""

ASSETS = """
query {
  pupils: assetNodeOrError(assetKey: {path: ["pupils"]}) { ... on AssetNode {
    partitionKeys
    partitionDefinition { type dimensionTypes { dynamicPartitionsDefinitionName } }
    assetPartitionStatuses { ... on DefaultPartitionStatuses { materializedPartitions failedPartitions } }
  } }
  evidence: assetOrError(assetKey: {path: ["evidence_table"]}) { ... on Asset {
    assetMaterializations(limit: 1) { runId timestamp
      metadataEntries { __typename label ... on MarkdownMetadataEntry { mdStr } } } } }
}
"""

LOADED_PARTITION = """
query ($school: String!) { assetOrError(assetKey: {path: ["pupils"]}) { ... on Asset {
  assetMaterializations(partitions: [$school], limit: 1) { runId timestamp partition } } } }
"""

RUN_FAILURES = """
query ($runId: ID!) { logsForRun(runId: $runId, limit: 1000) { ... on EventConnection { events {
  __typename ... on MessageEvent { message }
  ... on ExecutionStepFailureEvent { stepKey error { message } }
  ... on RunFailureEvent { stepKey error { message } } } } } }
"""

CHECKS = """
query { assetNodes { assetKey { path }
  assetChecksOrError { __typename ... on AssetChecks { checks { name
    executionForLatestMaterialization { status runId } } } } } }
"""


def _alive(d: Deployment) -> None:
    try:
        d.alive()
    except RuntimeError as exc:
        raise AssertionError(f"{exc}\n{d.logs()}") from None


def _location_loaded(client) -> bool:
    entries = query(client, LOCATIONS)["locationStatusesOrError"]["entries"]
    loaded = any(e["name"] == LOCATION and e["loadStatus"] == "LOADED" for e in entries)
    if loaded:
        for entry in query(client, WORKSPACE_ERRORS)["workspaceOrError"]["locationEntries"]:
            error = entry["locationOrLoadError"]
            if error and error["__typename"] == "PythonError":
                raise AssertionError(f"code location {entry['name']} failed to load: {error['message']}")
    return loaded


def _ticks(client, statuses: list[str]) -> list[dict]:
    sensor = query(client, TICKS, {"selector": SENSOR_SELECTOR, "statuses": statuses})["sensorOrError"]
    return sensor["sensorState"]["ticks"]


def _runs(client) -> list[dict]:
    runs = query(client, RUNS)["runsOrError"]
    assert runs["__typename"] == "Runs", runs
    return runs["results"]


def _published_after_load(client, schools: list[str]) -> dict | None:
    """The assets' state once every school in ``schools`` is loaded, every run has ended and the
    evidence table was materialised after those loads; None until then. Fails at once on a
    failed run."""
    runs = _runs(client)
    failed = [r for r in runs if r["status"] in {"FAILURE", "CANCELED"}]
    assert not failed, "run(s) failed:\n" + "\n".join(
        f"{r['runId']} {r['jobName']} {r['status']}: {_step_failures(client, r['runId'])}" for r in failed
    )
    if any(r["status"] not in TERMINAL for r in runs):
        return None
    loaded_at = []
    for school in schools:
        loads = query(client, LOADED_PARTITION, {"school": school})["assetOrError"]
        if not loads or not loads["assetMaterializations"]:
            return None
        loaded_at.append(float(loads["assetMaterializations"][0]["timestamp"]))
    state = query(client, ASSETS)
    latest = state["evidence"]["assetMaterializations"] if state["evidence"] else []
    if not latest or float(latest[0]["timestamp"]) < max(loaded_at):
        return None
    return {"pupils": state["pupils"], "evidence_table": latest[0]}


def _step_failures(client, run_id: str) -> str:
    """The run's step failure messages, for the assertion that reports a failed run."""
    logs = query(client, RUN_FAILURES, {"runId": run_id})["logsForRun"]
    events = logs.get("events", []) if logs else []
    return "; ".join(
        f"{e['stepKey']}: {(e['error'] or {}).get('message', e['message']).strip()}"
        for e in events if e.get("__typename") in ("ExecutionStepFailureEvent", "RunFailureEvent")
    ) or "(no step failure recorded)"


def _asset_checks(client) -> dict[str, str | None]:
    """``asset/check name -> status of its execution for the latest materialisation``."""
    found = {}
    for node in query(client, CHECKS)["assetNodes"]:
        checks = node["assetChecksOrError"]
        assert checks["__typename"] == "AssetChecks", checks
        for check in checks["checks"]:
            execution = check["executionForLatestMaterialization"]
            found["/".join(node["assetKey"]["path"]) + ":" + check["name"]] = execution and execution["status"]
    return found
