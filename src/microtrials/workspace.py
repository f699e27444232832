"""An officer's own workspace: ``microtrials.toml``, its folders and pupil key file, found as git finds its repository."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import stat
import sys
import tomllib
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from microtrials.errors import MicrotrialsError

CONFIG_NAME = "microtrials.toml"
#: Set by the `microtrials` command for the Dagster processes it starts: the workspace's folder.
ENV_VAR = "MICROTRIALS_WORKSPACE"
#: Days after a round's ``end_date`` that its results are due, unless ``init`` or the file says otherwise.
DEFAULT_DUE_DAYS = 14
DEFAULT_AREA = "our schools"
KEY_MODE = 0o600
PRIVATE_MODE = 0o700
#: Folders of the workspace, relative to it (what ``init`` writes into microtrials.toml).
LAYOUT = {
    "extracts": "extracts",
    "registry": "trials.csv",
    "published": "published",
    "feedback": "feedback",
    "warehouse": "warehouse/warehouse.duckdb",
    "dagster_home": "dagster",
}
#: How schools send their files: keys of the [schools] table, and what each is, for the officer.
CONTACT_KEYS = {
    "send_to": "the secure transfer address or upload link schools send their files to",
    "questions_email": "the e-mail address for schools' questions",
    "data_team": "who the data team is (a team or a person's name)",
}
REGISTRY_HEADER = (
    "intervention,outcome_measure,round,start_date,end_date,results_due,schools,aliases,secondary_outcomes,"
    "registered_on,toolkit_strand,national_months,cost_per_pupil,description,"
    "outcome_min,outcome_max,baseline_min,baseline_max\n"
)


@dataclass(frozen=True)
class Contact:
    """How, where and by when schools send their results (the [schools] table of microtrials.toml)."""

    send_to: str = ""
    questions_email: str = ""
    data_team: str = ""
    results_due_days: int = DEFAULT_DUE_DAYS

    def missing(self) -> list[str]:
        """The [schools] keys left blank, in CONTACT_KEYS order."""
        return [key for key in CONTACT_KEYS if not getattr(self, key).strip()]


@dataclass(frozen=True)
class Workspace:
    """A workspace's resolved paths and settings (see :func:`load`)."""

    root: Path
    area: str
    extracts: Path
    registry: Path
    published: Path
    feedback: Path
    warehouse: Path
    dagster_home: Path
    key_file: Path
    contact: Contact

    @property
    def config_file(self) -> Path:
        return self.root / CONFIG_NAME


def find(start: Path) -> Path | None:
    """The nearest folder at or above ``start`` holding ``microtrials.toml``, or None."""
    start = Path(start).absolute()
    for folder in (start, *start.parents):
        if (folder / CONFIG_NAME).is_file():
            return folder
    return None


def locate(explicit: Path | None = None, cwd: Path | None = None) -> Workspace | None:
    """The workspace ``--workspace DIR`` names, else the one at or above ``cwd``; None outside any.

    A ``--workspace`` folder without microtrials.toml is an error, not the demo.
    """
    if explicit is not None:
        root = Path(explicit).absolute()
        if not (root / CONFIG_NAME).is_file():
            raise MicrotrialsError(
                f"--workspace {explicit}: no {CONFIG_NAME} there; create a workspace with "
                f"`microtrials init {explicit}`, or give the folder that holds {CONFIG_NAME}")
        return load(root)
    root = find(Path.cwd() if cwd is None else cwd)
    return None if root is None else load(root)


def _text(table: dict, key: str, where: str, default: str = "") -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise MicrotrialsError(f"{where}: {key} must be text in double quotes, e.g. {key} = \"...\"")
    return value.strip()


def load(root: Path) -> Workspace:
    """Read ``root/microtrials.toml``: relative paths are taken from ``root``; a mistake raises
    :class:`MicrotrialsError` naming the file, the key and what to write."""
    root = Path(root).absolute()
    path = root / CONFIG_NAME
    try:
        config = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MicrotrialsError(f"cannot read {path} ({exc.strerror or exc})") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise MicrotrialsError(f"{path} is not valid TOML ({exc}): correct it, or run `microtrials init` "
                               "in a new folder to see a good one") from exc
    folders, schools = config.get("workspace", {}), config.get("schools", {})
    if not isinstance(folders, dict) or not isinstance(schools, dict):
        raise MicrotrialsError(f"{path}: [workspace] and [schools] must be tables")
    where = f"{path} [workspace]"
    paths = {name: root / _text(folders, name, where, default) for name, default in LAYOUT.items()}
    key_text = _text(folders, "pupil_key_file", where)
    if not key_text:
        raise MicrotrialsError(f"{where}: pupil_key_file is missing: name the file holding the pupil key")
    days = schools.get("results_due_days", DEFAULT_DUE_DAYS)
    if isinstance(days, bool) or not isinstance(days, int) or not 0 <= days <= 366:
        raise MicrotrialsError(f"{path} [schools]: results_due_days must be a whole number of days from 0 to "
                               f"366, e.g. results_due_days = {DEFAULT_DUE_DAYS}")
    contact = Contact(**{k: _text(schools, k, f"{path} [schools]") for k in CONTACT_KEYS}, results_due_days=days)
    return Workspace(root=root, area=_text(folders, "area", where, DEFAULT_AREA) or DEFAULT_AREA,
                     key_file=(root / Path(key_text).expanduser()), contact=contact, **paths)


def default_key_file(root: Path, home: Path | None = None) -> Path:
    """Where ``init`` puts the key: the user's own config folder, outside the workspace (which may be
    shared or backed up with the warehouse), one file per workspace."""
    base = os.environ.get("XDG_CONFIG_HOME") or str((home or Path.home()) / ".config")
    tag = hashlib.sha256(str(Path(root).absolute()).encode()).hexdigest()[:8]
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(root).absolute().name).strip("-") or "workspace"
    return Path(base) / "microtrials" / f"{name}-{tag}.pupil-key"


def write_key(path: Path) -> None:
    """A new random 256-bit key (64 hex digits) in ``path``, created readable by its owner only (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_MODE)
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(secrets.token_hex(32) + "\n")
    os.chmod(path, KEY_MODE)  # whatever the umask


def read_key(path: Path) -> str:
    """The key in ``path``; refused when missing, empty, or readable by others (POSIX)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError as exc:
        raise MicrotrialsError(
            f"the pupil key file {path} (named in {CONFIG_NAME}) is missing: restore it from your backup "
            "(README \"Back up the key\"); without the same key re-deliveries no longer match their pupils") from exc
    except OSError as exc:
        raise MicrotrialsError(f"cannot read the pupil key file {path} ({exc.strerror or exc})") from exc
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise MicrotrialsError(f"the pupil key file {path} can be read by other accounts: make it yours "
                               f"alone with `chmod 600 {path}` and run again")
    if not text:
        raise MicrotrialsError(f"the pupil key file {path} is empty: restore it from your backup")
    return text


def _inside(path: Path, folder: Path) -> bool:
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def check_key_place(key_file: Path, paths: list[Path]) -> None:
    """Refuse a key file inside any of ``paths`` (published, feedback, extracts: what leaves or arrives)."""
    for folder in paths:
        if _inside(key_file, folder):
            raise MicrotrialsError(f"the pupil key file {key_file} would be inside {folder}, which is published "
                                   "or shared: put it elsewhere (--key-file)")


def from_environment(environ: dict[str, str] | None = None) -> Workspace | None:
    """The workspace ``MICROTRIALS_WORKSPACE`` names (set by the `microtrials` command for Dagster), or None."""
    root = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
    return load(Path(root)) if root else None


def environment(ws: Workspace) -> dict[str, str]:
    """What the Dagster processes of a workspace need in their environment (paths come from the file)."""
    return {ENV_VAR: str(ws.root), "DAGSTER_HOME": str(ws.dagster_home)}


def _toml(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's, ``\\/`` aside, which JSON does not write)."""
    import json

    return json.dumps(str(value), ensure_ascii=False)


def config_text(area: str, key_file: Path, contact: Contact) -> str:
    """microtrials.toml as ``init`` writes it: every setting, each with what it is."""
    lines = [
        "# A microtrials workspace (README \"Going live\"). Paths are relative to this folder.",
        "[workspace]",
        "# Published pages say \"What works for <area>\".",
        f"area = {_toml(area)}",
        "# Schools' extract files go here; every run loads what is new.",
        f"extracts = {_toml(LAYOUT['extracts'])}",
        "# The trial registry: one row per trial round (docs/registry.md).",
        f"registry = {_toml(LAYOUT['registry'])}",
        "# The publication, replaced whole by each run: share this folder, nothing else.",
        f"published = {_toml(LAYOUT['published'])}",
        "# Private: what each school should fix, one folder per URN; send each school only its own.",
        f"feedback = {_toml(LAYOUT['feedback'])}",
        "# The DuckDB warehouse (pseudonymised pupil rows, every delivery, every publication).",
        f"warehouse = {_toml(LAYOUT['warehouse'])}",
        "# The Dagster instance: dagster.yaml (SQLite; PostgreSQL: docs/deployment.md), run history, logs.",
        f"dagster_home = {_toml(LAYOUT['dagster_home'])}",
        "# The pupil key: secret, outside anything published or shared; back it up (README \"Back up the key\").",
        "# MICROTRIALS_PUPIL_KEY, when set, overrides it.",
        f"pupil_key_file = {_toml(key_file)}",
        "",
        "[schools]",
        "# Shown on the \"Send your results\" page and in every template; a blank one is named at every run.",
    ]
    for key, what in CONTACT_KEYS.items():
        lines += [f"# {what[0].upper()}{what[1:]}.", f"{key} = {_toml(getattr(contact, key))}"]
    lines += ["# Results are due this many days after a round's end_date (a results_due column in the",
              "# registry sets a round's date itself).", f"results_due_days = {contact.results_due_days}", ""]
    return "\n".join(lines)


def instance_yaml(repository_yaml: str) -> str:
    """The workspace's dagster.yaml: the project's (same queue, pools and run monitoring), with its
    storage in the instance folder itself."""
    text = (repository_yaml.replace("base_dir: data/dagster/storage", "base_dir: storage")
            .replace("base_dir: data/dagster/logs", "base_dir: logs")
            .replace("base_dir: data/dagster", "base_dir: artifacts"))
    body = text[text.index("storage:"):] if "storage:" in text else text
    return ("# This workspace's Dagster instance (DAGSTER_HOME): run history, event logs and schedules in\n"
            "# SQLite files here, paths relative to this folder. For PostgreSQL instead, see the project's\n"
            "# docs/deployment.md (replace `storage:` below with its `postgres:` block).\n" + body)


def init(root: Path, repository_yaml: str, area: str = DEFAULT_AREA, key_file: Path | None = None,
         contact: Contact | None = None, demo: Path | None = None) -> Workspace:
    """Create an empty workspace in ``root`` (a new or empty folder, not inside ``demo``, the bundled
    demo's folder): its folders, a registry with only the header row, the Dagster instance, a new
    pupil key file (0600) and microtrials.toml naming them."""
    root = Path(root).absolute()
    if demo is not None and _inside(root, demo):
        raise MicrotrialsError(f"{root} is inside the bundled demo's folder {demo}: a workspace lives on its own, "
                               "e.g. `microtrials init ~/microtrials-workspace` (nothing was changed)")
    if (root / CONFIG_NAME).exists():
        raise MicrotrialsError(f"{root} is already a workspace ({CONFIG_NAME} is there): nothing was changed")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise MicrotrialsError(f"{root} is not an empty folder: give a new or empty folder, so the workspace "
                               "holds only its own files (nothing was changed)")
    outer = find(root.parent)
    if outer is not None:
        raise MicrotrialsError(f"{root} is inside the workspace {outer}: choose a folder outside it (nothing was changed)")
    key_file = Path(key_file).absolute() if key_file is not None else default_key_file(root)
    if key_file.exists():
        raise MicrotrialsError(f"the key file {key_file} already exists: give another with --key-file, so no "
                               "key is overwritten (nothing was changed)")
    layout = {name: root / relative for name, relative in LAYOUT.items()}
    check_key_place(key_file, [layout["published"], layout["feedback"], layout["extracts"]])
    layout["published"].mkdir(parents=True, exist_ok=True)
    # Pupil-level files (school extracts, feedback, the warehouse, run logs): the owner's alone.
    for folder in (layout["extracts"], layout["feedback"], layout["warehouse"].parent, layout["dagster_home"]):
        folder.mkdir(parents=True, exist_ok=True, mode=PRIVATE_MODE)
        os.chmod(folder, PRIVATE_MODE)
    (layout["dagster_home"] / "dagster.yaml").write_text(instance_yaml(repository_yaml), encoding="utf-8")
    layout["registry"].write_text(REGISTRY_HEADER, encoding="utf-8")
    write_key(key_file)
    (root / CONFIG_NAME).write_text(config_text(area, key_file, contact or Contact()), encoding="utf-8")
    return load(root)


def demo_file_reason(file_name: str) -> str:
    """Why a workspace refuses a file that is, byte for byte, one of the bundled demo's (sample manifest)."""
    return (f"{file_name}: a file of the bundled demo (fictional pupils), not a school's delivery: a "
            "workspace never loads the demo's files; delete it from the extracts folder (the demo runs on its "
            "own with scripts/run.sh)")


def command_name(environ: dict[str, str] | None = None) -> str:
    """How the officer types this installation's ``microtrials`` command: the bare name when it is
    the one on ``PATH``, else the full path of the venv's script (``.venv/bin/microtrials`` in a clone)."""
    script = Path(sys.executable).parent / "microtrials"
    found = shutil.which("microtrials", path=(environ if environ is not None else os.environ).get("PATH"))
    if not script.is_file() or (found is not None and Path(found).resolve() == script.resolve()):
        return "microtrials"
    return str(script)


def next_steps(ws: Workspace, command: str = "microtrials") -> str:
    """What ``init`` prints: what it made, and the officer's next steps (README "Going live");
    ``command`` is how the officer types microtrials (:func:`command_name`)."""
    missing = ", ".join(ws.contact.missing())
    lines = [
        f"microtrials workspace created in {ws.root}",
        f"  settings:        {ws.config_file}",
        f"  school files:    {ws.extracts}/",
        f"  trial registry:  {ws.registry} (header row only; docs/registry.md has a worked example)",
        f"  publication:     {ws.published}/ (share this folder, nothing else)",
        f"  school feedback: {ws.feedback}/ (private: one folder per school)",
        f"  warehouse:       {ws.warehouse}",
        f"  Dagster:         {ws.dagster_home}/dagster.yaml (SQLite)",
        f"  pupil key:       {ws.key_file} (readable by you only)",
        "Next:",
        f"  1. back up the key file now: lose it and re-deliveries no longer match their pupils",
        f"  2. register your trials in {ws.registry.name}, one row per round",
    ]
    if missing:
        lines.append(f"  3. in {CONFIG_NAME} [schools], fill in {missing}: schools are told them on the "
                     "\"Send your results\" page")
    lines.append(f"  {4 if missing else 3}. put the schools' files in {ws.extracts.name}/ and run, from inside "
                 f"{ws.root}: {command} run")
    return "\n".join(lines)


def _day(when: date) -> str:
    return f"{when.day} {when:%B %Y}"


def send_details(contact: Contact, rounds: list, today: date) -> dict:
    """What the "Send your results" page and the templates tell schools: where (``send_to``, a link
    when it is an https address), whom to ask, and each registered round's deadline
    (:func:`microtrials.ingest.registry.results_due`), latest first; blank settings stay blank (the page
    then says to ask the authority's data team)."""
    from microtrials.ingest.registry import results_due

    deadlines = []
    for r in rounds:
        due = results_due(r, contact.results_due_days)
        deadlines.append({"intervention": r.intervention, "round": r.round, "date": due,
                          "due": _day(due) if due else "", "past": due is not None and due < today})
    deadlines.sort(key=lambda d: (d["date"] is not None, d["date"] or today), reverse=True)
    return {"send_to": contact.send_to, "link": contact.send_to.startswith("https://"),
            "questions_email": contact.questions_email, "data_team": contact.data_team,
            "deadlines": [{k: v for k, v in d.items() if k != "date"} for d in deadlines]}


ASK = "ask your authority's data team"


def template_notes(details: dict, intervention: str) -> list[tuple[str, str]]:
    """The rows a trial's Excel template starts its "How to fill" sheet with: where, by when, questions."""
    from microtrials.ingest.names import match_key

    dues = [f"{d['round'] + ': ' if d['round'] else ''}{'was due' if d['past'] else 'by'} {d['due']}"
            for d in details["deadlines"] if d["due"] and match_key(d["intervention"]) == match_key(intervention)]
    team = f" ({details['data_team']})" if details["data_team"] else ""
    return [
        ("Send it to", (details["send_to"] or ASK) + " (never by ordinary e-mail: the file holds pupils' records)"),
        ("Results due", "; ".join(dues) or ASK),
        ("Questions", (details["questions_email"] or ASK) + team),
    ]
