"""`microtrials init` and the workspace: its layout, the key file, found as git finds its repository."""

from __future__ import annotations

import os
import random
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from microtrials import cli, workspace
from microtrials.ingest import privacy
from microtrials.errors import MicrotrialsError
from tests.conftest import REPO_ROOT, TEST_PUPIL_KEY

MICROTRIALS = Path(sys.executable).with_name("microtrials")
YAML = (REPO_ROOT / "dagster.yaml").read_text()


def make(tmp_path: Path, **kwargs) -> workspace.Workspace:
    return workspace.init(tmp_path / "ws", YAML, key_file=tmp_path / "keys" / "pupil.key", **kwargs)


def test_init_makes_an_empty_workspace_that_names_its_folders(tmp_path):
    ws = make(tmp_path, area="Testshire")
    assert sorted(p.name for p in ws.root.iterdir()) == [
        "dagster", "extracts", "feedback", "microtrials.toml", "published", "trials.csv", "warehouse"]
    assert ws.registry.read_text().splitlines() == [workspace.REGISTRY_HEADER.strip()]  # the header row only
    assert not any(ws.extracts.iterdir()) and not any(ws.published.iterdir())
    config = tomllib.loads(ws.config_file.read_text())
    assert config["workspace"]["extracts"] == "extracts" and config["workspace"]["area"] == "Testshire"
    assert config["workspace"]["pupil_key_file"] == str(tmp_path / "keys" / "pupil.key")
    assert workspace.load(ws.root) == ws
    assert (ws.extracts, ws.published, ws.warehouse) == (
        ws.root / "extracts", ws.root / "published", ws.root / "warehouse" / "warehouse.duckdb")
    instance = (ws.dagster_home / "dagster.yaml").read_text()
    assert "base_dir: storage" in instance and "data/dagster" not in instance and "postgres" in instance.lower()


def test_init_registry_header_has_the_declared_score_range_columns(tmp_path):
    """An officer fills in trials.csv from init's header: it names every column the registry reads,
    the declared score ranges too (docs/registry.md)."""
    from microtrials.ingest.registry import RANGE_COLUMNS, read_registry

    ws = make(tmp_path)
    header = ws.registry.read_text().strip().split(",")
    assert header[-4:] == list(RANGE_COLUMNS)
    row = "Paired reading,NGRT,,2026-01-05,2026-03-27,,123451 123452,,,2025-12-01,,,,,69,141,70,140"
    registry = read_registry((ws.registry.read_text() + row + "\n").encode())
    assert (registry.rounds[0].outcome_min, registry.rounds[0].baseline_max) == (69, 140)


def test_init_names_the_command_as_it_works_here(tmp_path, monkeypatch, capsys):
    """Outside the venv's PATH the next step names the script's full path (a fresh clone has no
    `microtrials` on PATH); on PATH, the bare name."""
    ws = make(tmp_path)
    assert workspace.command_name({"PATH": "/usr/bin:/bin"}) == str(MICROTRIALS)
    assert workspace.command_name({"PATH": str(MICROTRIALS.parent)}) == "microtrials"
    assert workspace.next_steps(ws, str(MICROTRIALS)).endswith(f"{ws.root}: {MICROTRIALS} run")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert cli.main(["init", str(tmp_path / "other"), "--key-file", str(tmp_path / "k2")]) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"{MICROTRIALS} run")


def test_the_key_file_is_new_random_and_readable_by_its_owner_only(tmp_path):
    ws = make(tmp_path)
    assert stat.S_IMODE(ws.key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(ws.key_file.parent.stat().st_mode) == 0o700
    for private in (ws.extracts, ws.feedback, ws.warehouse.parent, ws.dagster_home):
        assert stat.S_IMODE(private.stat().st_mode) == 0o700, private
    key = workspace.read_key(ws.key_file)
    assert len(key) == 64 and privacy.key_bits(key) == 256
    privacy.check_key_strength(key)
    other = workspace.init(tmp_path / "ws2", YAML, key_file=tmp_path / "keys" / "other.key")
    assert workspace.read_key(other.key_file) != key


def test_the_workspace_key_is_used_unless_the_environment_overrides_it(tmp_path):
    ws = make(tmp_path)
    stored = workspace.read_key(ws.key_file).encode()
    sample = REPO_ROOT / "data" / "extracts" / "111100.csv"
    environ = {workspace.ENV_VAR: str(ws.root)}
    assert privacy.pupil_key([sample], environ) == stored  # never the sample key in a workspace
    assert privacy.pupil_key([], {**environ, privacy.KEY_VARIABLE: TEST_PUPIL_KEY}) == TEST_PUPIL_KEY.encode()


def test_a_key_file_others_can_read_missing_or_the_sample_key_is_refused(tmp_path):
    ws = make(tmp_path)
    environ = {workspace.ENV_VAR: str(ws.root)}
    os.chmod(ws.key_file, 0o644)
    with pytest.raises(MicrotrialsError, match="chmod 600"):
        privacy.pupil_key([], environ)
    os.chmod(ws.key_file, 0o600)
    ws.key_file.write_text(privacy.SAMPLE_KEY)
    with pytest.raises(MicrotrialsError, match="sample key"):
        privacy.pupil_key([], environ)
    ws.key_file.unlink()
    with pytest.raises(MicrotrialsError, match="is missing: restore it from your backup"):
        privacy.pupil_key([], environ)


def test_init_refuses_a_used_folder_a_nested_one_the_demo_and_an_existing_key(tmp_path):
    ws = make(tmp_path)
    with pytest.raises(MicrotrialsError, match="already a workspace"):
        workspace.init(ws.root, YAML, key_file=tmp_path / "k1")
    with pytest.raises(MicrotrialsError, match="inside the workspace"):
        workspace.init(ws.root / "inner", YAML, key_file=tmp_path / "k2")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    with pytest.raises(MicrotrialsError, match="not an empty folder"):
        workspace.init(tmp_path / "busy", YAML, key_file=tmp_path / "k3")
    with pytest.raises(MicrotrialsError, match="bundled demo"):
        workspace.init(REPO_ROOT / "data" / "mine", YAML, key_file=tmp_path / "k4", demo=REPO_ROOT / "data")
    with pytest.raises(MicrotrialsError, match="already exists"):
        workspace.init(tmp_path / "new", YAML, key_file=ws.key_file)
    with pytest.raises(MicrotrialsError, match="published or shared"):
        workspace.init(tmp_path / "new", YAML, key_file=tmp_path / "new" / "published" / "key")
    assert not (tmp_path / "new").exists() and workspace.read_key(ws.key_file)  # nothing was changed


def test_commands_find_the_workspace_upwards_or_by_option(tmp_path):
    ws = make(tmp_path)
    deep = ws.extracts / "a" / "b"
    deep.mkdir(parents=True)
    assert workspace.locate(cwd=deep).root == ws.root
    assert workspace.locate(ws.root).root == ws.root
    assert workspace.locate(cwd=tmp_path) is None  # outside: the bundled demo
    with pytest.raises(MicrotrialsError, match="no microtrials.toml there"):
        workspace.locate(tmp_path)


@pytest.mark.parametrize("line, match", [
    ("results_due_days = -1", "results_due_days must be a whole number"),
    ('results_due_days = "soon"', "results_due_days must be a whole number"),
    ("send_to = 3", "send_to must be text"),
    ("send_to = ", "not valid TOML"),
])
def test_a_mistake_in_the_settings_file_names_the_key_and_what_to_write(tmp_path, line, match):
    ws = make(tmp_path)
    text = ws.config_file.read_text()
    key = line.split("=")[0].strip()
    text = "\n".join(line if row.startswith(f"{key} =") else row for row in text.splitlines())
    ws.config_file.write_text(text)
    with pytest.raises(MicrotrialsError, match=match):
        workspace.load(ws.root)


def test_every_option_of_every_command_says_its_default(capsys):
    parser = cli._parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"init", "run", "ui", "serve", "plan"} <= set(commands)
    for name, command in commands.items():
        for action in command._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and ("default" in action.help or action.required), (name, action.dest)


def school_file(path: Path, urn: str, seed: int) -> None:
    """A school's extract of 40 pupils on one trial (the officer's own, not the demo's)."""
    rng = random.Random(seed)
    lines = ["school_urn,pupil_id,intervention,outcome_measure,arm,baseline,outcome"]
    for i in range(40):
        arm = ("control", "intervention")[i % 2]
        baseline = rng.gauss(100, 15)
        outcome = 0.7 * baseline + 30 + (4 if arm == "intervention" else 0) + rng.gauss(0, 8)
        lines.append(f"{urn},P{i:03d},Paired reading,NGRT standardised score,{arm},{baseline:.0f},{outcome:.0f}")
    path.write_text("\n".join(lines) + "\n")


def clean_run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`microtrials ARGS` with no environment variables at all (as a scheduled task may have)."""
    return subprocess.run([str(MICROTRIALS), *args], cwd=cwd, env={}, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_workspace_loads_publishes_reruns_and_refuses_demo_files_with_no_environment(tmp_path):
    done = clean_run(["init", "ws", "--area", "Testshire", "--key-file", str(tmp_path / "key" / "pupil.key")], tmp_path)
    assert done.returncode == 0, done.stderr
    ws = tmp_path / "ws"
    school_file(ws / "extracts" / "123456.csv", "123456", 1)
    school_file(ws / "extracts" / "123457.csv", "123457", 2)
    with open(ws / "trials.csv", "a") as registry:
        registry.write("Paired reading,NGRT standardised score,,2026-01-05,2026-03-27,,123456 123457,,,,,,,\n")
    first = clean_run(["run"], ws / "extracts")  # found upwards from a folder inside it
    assert first.returncode == 0, first.stderr[-3000:]
    table = pd.read_csv(ws / "published" / "evidence_table.csv")
    assert list(table["intervention"]) == ["Paired reading"] and table.loc[0, "schools"] == 2 and table.loc[0, "pupils_randomised"] == 80
    assert "What works for Testshire" in (ws / "published" / "index.html").read_text()
    assert (ws / "warehouse" / "warehouse.duckdb").is_file() and (ws / "dagster" / "storage").is_dir()
    assert "bundled demo" not in first.stderr
    assert ("    schools are not told send_to, questions_email, data_team: fill them in under [schools] in "
            "microtrials.toml") in first.stdout  # the route is missing: named at every run
    assert "ask your authority's data team for its secure route" in (ws / "published" / "send-your-results.html").read_text()

    demo = REPO_ROOT / "data" / "extracts" / "111100.csv"
    shutil.copy(demo, ws / "extracts" / "111100.csv")
    again = clean_run(["run", "--workspace", str(ws)], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert ("rejected 111100.csv: a file of the bundled demo (fictional pupils), not a school's delivery"
            in again.stdout), again.stdout
    assert "2 unchanged since their last load" in again.stdout and "schools are not told send_to" in again.stdout
    assert list(pd.read_csv(ws / "published" / "evidence_table.csv")["intervention"]) == ["Paired reading"]
    assert not (REPO_ROOT / "data" / "extracts" / "123456.csv").exists()
