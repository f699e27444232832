"""The officer's to-do list after a run: registry findings, trials by status, files that did nothing, new feedback."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from microtrials.ingest.change_sets import HELD_MARK

#: The demo's deliberately unregistered intervention (microtrials.sample_data.UNREGISTERED).
DEMO_UNREGISTERED = "Philosophy for Children"
#: Lines shown per section; the rest are counted, with where to find them.
SHOWN = 10


@dataclass
class RunFacts:
    """What a finished run left behind, as the to-do list reads it (every frame may be None or empty)."""

    messages: pd.DataFrame | None = None  # registry_messages: level, rule, intervention, school_urn, message
    progress: pd.DataFrame | None = None  # registry_progress: intervention, round, awaited_urns, status, status_note
    evidence: pd.DataFrame | None = None  # evidence_table.csv as published
    files: pd.DataFrame | None = None  # load_report rows of the files now in the extracts folder
    new_feedback: list[tuple[str, Path]] = field(default_factory=list)  # (school, feedback file) written this run
    missing_settings: list[str] = field(default_factory=list)  # blank [schools] keys of microtrials.toml
    demo: bool = False  # the bundled demo, not a workspace
    report: str = "registry_report.csv"  # where the registry's findings are, in full


def _words(text: object) -> str:
    return " ".join(str(text).split()) if text is not None and not (isinstance(text, float) and text != text) else ""


def _capped(lines: list[str], where: str) -> list[str]:
    if len(lines) <= SHOWN:
        return lines
    return lines[:SHOWN] + [f"    ... and {len(lines) - SHOWN} more ({where})"]


def demonstration(rule: object, intervention: object, demo: bool) -> str | None:
    """What the demo says of its deliberately unregistered trial (a registry message with ``rule``
    about ``intervention``), or None for any other message or outside the demo, where it stays an error."""
    if demo and rule == "unregistered" and _words(intervention) == DEMO_UNREGISTERED:
        return (f"demonstration: '{DEMO_UNREGISTERED}' is left out of the demo's registry on purpose, to show what "
                "happens to an unregistered trial: its rows are loaded, never published as evidence")
    return None


def registry_lines(facts: RunFacts) -> list[str]:
    """Every registry finding: errors, then schools awaited per round, then the rest (unplanned schools, ...)."""
    found: list[str] = []
    messages = facts.messages if facts.messages is not None else pd.DataFrame(columns=["level", "message"])
    for _, row in messages[messages["level"] == "error"].iterrows():
        shown = demonstration(row.get("rule"), row.get("intervention"), facts.demo)
        found.append(f"    {shown or 'error: ' + _words(row['message'])}")
    progress = facts.progress if facts.progress is not None else pd.DataFrame()
    for _, row in progress.iterrows():
        urns = _words(row.get("awaited_urns"))
        if urns:
            name = row["intervention"] + (f" ({row['round']})" if _words(row.get("round")) else "")
            found.append(f"    awaited for {name}: {', '.join(urns.split())} ({_words(row.get('status_note'))})")
    for _, row in messages[messages["level"] != "error"].iterrows():
        found.append(f"    {row['level']}: {_words(row['message'])}")
    return ["  registry:"] + _capped(found, f"all in {facts.report}") if found else []


def _trial_name(row: pd.Series) -> str:
    name = f"{row['intervention']} / {row['outcome_measure']}"
    return name + (f" / {row['round']}" if "round" in row and _words(row["round"]) else "")


def trial_lines(facts: RunFacts) -> list[str]:
    """Each trial by name with its status; an interim one says whom it awaits, a not-estimable or
    not-refreshed one why."""
    table = facts.evidence
    if table is None or table.empty or "status" not in table:
        return []
    awaited = {}
    if facts.progress is not None:
        for _, row in facts.progress.iterrows():
            awaited[(_words(row["intervention"]), _words(row.get("round")))] = _words(row.get("awaited_urns"))
    lines = []
    for _, row in table.iterrows():
        status = _words(row["status"]) or "unknown"
        text = f"    {_trial_name(row)}: {status.replace('_', ' ')}"
        if status == "interim":
            whom = awaited.get((_words(row["intervention"]), _words(row.get("round"))), "")
            text += f", awaiting {', '.join(whom.split())}" if whom else f" ({_words(row.get('notes')).split(';')[0]})"
        elif status in ("not_estimable", "not_refreshed"):
            text += f": {_words(row.get('notes')).split(';')[0].strip() or 'no reason recorded'}"
        lines.append(text)
    return ["  trials:"] + _capped(lines, "evidence_table.csv")


def _trial_set(text: object) -> set[str]:
    return {part.strip() for part in _words(text).split(";") if part.strip()}


def made_good(files: pd.DataFrame) -> set[str]:
    """The rejected files a later file of the same school made good: loaded (now or before) after the
    rejected one arrived (``arrived_at``), carrying every trial the rejected file named (any trial,
    when it was rejected before its trials were read). No longer a to-do."""
    if "arrived_at" not in files or "school_urn" not in files:
        return set()
    good = [(_words(r.get("school_urn")), r["arrived_at"], _trial_set(r.get("trials"))) for _, r in files.iterrows()
            if r["status"] in ("loaded", "unchanged") and pd.notna(r["arrived_at"])]
    out = set()
    for _, row in files[(files["status"] == "rejected") & files["arrived_at"].notna()].iterrows():
        urn, wanted = _words(row.get("school_urn")), _trial_set(row.get("trials"))
        if urn and any(school == urn and when > row["arrived_at"] and wanted <= trials for school, when, trials in good):
            out.add(str(row["file_name"]))
    return out


def file_lines(facts: RunFacts) -> list[str]:
    """Every file that held or replaced nothing (rejected, ignored, a trial it did not replace, a change
    held until the officer accepts it), with why; a rejected file a later file made good is left out
    (:func:`made_good`)."""
    files = facts.files
    if files is None or files.empty:
        return []
    lines = []
    done = made_good(files)
    for _, row in files[~files["file_name"].astype(str).isin(done)].iterrows():
        status, reason = _words(row["status"]), _words(row.get("reason"))
        reason = reason.removeprefix(f"{row['file_name']}: ")
        changes = row.get("changes") if "changes" in row else None
        held = [_words(line) for line in (str(changes).split("\n") if _words(changes) else []) if HELD_MARK in line]
        for line in held:  # a held change is in the reason too: listed once, as "held <file>: ..."
            reason = "; ".join(part.strip(" ;") for part in reason.split(line) if part.strip(" ;"))
        if status in ("rejected", "ignored"):
            lines.append(f"    {status} {row['file_name']}: {reason or 'no reason recorded'}")
        elif reason and status != "unchanged":
            lines.append(f"    {row['file_name']} ({status}): {reason}")
        lines += [f"    held {row['file_name']}: {line}" for line in held]
    return ["  files that loaded or replaced nothing:"] + _capped(lines, "load_report.csv") if lines else []


def feedback_lines(facts: RunFacts) -> list[str]:
    """Each school whose feedback file is new since the last run (send each school only its own)."""
    if not facts.new_feedback:
        return []
    lines = [f"    {school}: {path}" for school, path in facts.new_feedback]
    return ["  new feedback for schools (private: send each school only its own):"] + _capped(lines, "the feedback folder")


def settings_lines(facts: RunFacts) -> list[str]:
    """Blank settings of the workspace that schools need: named at every run until filled in."""
    if facts.demo or not facts.missing_settings:
        return []
    return ["  settings:", f"    schools are not told {', '.join(facts.missing_settings)}: fill "
            f"{'it' if len(facts.missing_settings) == 1 else 'them'} in under [schools] in microtrials.toml "
            "(the \"Send your results\" page says \"ask your authority's data team\" until then)"]


def todo_lines(facts: RunFacts) -> list[str]:
    """The officer's to-do list, in this order: registry, trials, files, feedback, settings."""
    body = registry_lines(facts) + trial_lines(facts) + file_lines(facts) + feedback_lines(facts) + settings_lines(facts)
    return ["to do:"] + body if body else ["to do: nothing"]


def as_markdown(lines: list[str]) -> str:
    """The same list for the Dagster UI's run metadata: sections as headings, items as bullets."""
    out = []
    for line in lines[1:] or lines:
        if line.startswith("    "):
            out.append(f"- {line.strip()}")
        else:
            out.append(f"\n**{line.strip().rstrip(':')}**\n")
    return "\n".join(out).strip() or "nothing to do"


def gather(con, evidence: pd.DataFrame | None, extracts: Path, feedback_dir: Path,
           missing_settings: list[str], demo: bool, report: str = "registry_report.csv") -> RunFacts:
    """:class:`RunFacts` from the warehouse (read-only is enough) and the folders after a run.

    Files are those of the load report still in ``extracts``; a school's feedback is new when its
    file was loaded or rejected in this run (an unchanged file's feedback was new when it arrived)
    and its feedback file exists, unless a later file of the school made the rejection good.
    """
    import os

    from microtrials.ingest import feedback
    from microtrials.ingest import change_sets, warehouse

    def table(name: str, query: str) -> pd.DataFrame | None:
        return con.execute(warehouse.sql(query)).df() if warehouse.table_exists(con, name) else None

    files = table("load_report", "load_report")
    if files is not None:
        try:
            present = set(os.listdir(extracts))
        except OSError:
            present = set(files["file_name"])
        files = files[files["file_name"].isin(present)]
        files = change_sets.with_superseded(con, files)
        if warehouse.table_exists(con, "latest_deliveries"):
            arrivals = con.execute(warehouse.sql("file_arrivals")).df()
            files = files.merge(arrivals.drop_duplicates("file_name"), on="file_name", how="left")
    new = []
    if files is not None:
        done = made_good(files)  # a rejection the school's later file made good: its feedback is no news
        for _, row in files[files["status"].isin(["loaded", "rejected"]) & ~files["file_name"].isin(done)].iterrows():
            path = feedback.feedback_path(feedback_dir, _words(row.get("school_urn")), str(row["file_name"]))
            if path.is_file():
                new.append((path.parent.name, path))
    return RunFacts(messages=table("registry_messages", "registry_messages"),
                    progress=table("registry_progress", "registry_progress"), evidence=evidence, files=files,
                    new_feedback=sorted(new), missing_settings=missing_settings, demo=demo, report=report)
