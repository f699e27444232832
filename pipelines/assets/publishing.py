"""Publishing: the publication staged, judged by its blocking checks, and only then swapped in atomically."""

import datetime as dt
import io
import json
import os
import shutil

import dagster as dg
import pandas as pd

from microtrials import summary, workspace
from microtrials.publish import dictionary
from microtrials.publish import history
from microtrials.ingest import change_sets, loading
from microtrials.stats import planner
from microtrials.publish import publish
from microtrials.publish import site
from microtrials.ingest import warehouse
from microtrials.publish import gate as publication_gate
from microtrials.errors import MicrotrialsError
from microtrials.publish.evidence_table import COLUMNS, EXTRA_COLUMNS, SCHOOL_COLUMNS
from microtrials.ingest.registry import load_registry
from pipelines.assets.registry import trials_file
from pipelines.launch import officer_step
from pipelines.resources import Settings, Warehouse

HISTORY_ROWS_SHOWN = 6  # publications per trial in the UI's history table
CORRECTION_TAG = "microtrials/correction"  # a run tag marking the run as a correction (text: why)
# Beside the staged files: what the swap needs (when, the correction, the rows the history keeps).
STAGED_META, STAGED_ROWS, STAGED_SCHOOLS = "meta.json", "published.parquet", "school_urns.parquet"


@dg.asset(
    group_name="publishing",
    kinds={"csv", "html"},
    deps=["trial_results"],
    description="The next publication, built and staged beside the output folder (`.<out>.staged-<run>`), "
    "not yet published: evidence_table.csv (the contract's columns, one row per trial; every figure is a "
    "column of `trial_results`, made by microtrials.publish.evidence_table.evidence_row), <trial>/schools.csv with "
    "small groups suppressed, load_report.csv and index.html with per-trial pages (microtrials.publish.site."
    "build_site), each trial page with its history including this publication and what changed since the "
    "last one. Its blocking checks (one_row_per_trial, no_pupil_identifiers_published) judge these staged "
    "files; only when they pass does `evidence_table` swap them in.",
)
@officer_step
def staged_publication(context: dg.AssetExecutionContext, settings: Settings,
                       warehouse_db: Warehouse) -> dg.MaterializeResult:
    now = dt.datetime.now(dt.timezone.utc)
    with warehouse_db.connect() as con:
        inputs = _inputs(con, settings)
    correction = context.run.tags.get(CORRECTION_TAG) or os.environ.get("MICROTRIALS_CORRECTION") or None
    built = _build(inputs, settings, now, correction)
    if built["withheld"]:
        context.log.info(f"{built['withheld']} trial row(s) withheld by the publication gate "
                         "(names not registered or not carried widely)")
    for problem in built["problems"]:  # one trial's trouble is reported, never a reason to stop the others
        context.log.warning(problem)
    meta = {"published_at": now.replace(tzinfo=None).isoformat(), "correction": correction,
            "trials": len(built["table"])}
    with warehouse_db.connect() as con:  # what the next publication's disclosure control is audited against
        history.keep_disclosure_state(con, context.run.run_id, now.replace(tzinfo=None), built["disclosure"],
                                      built["shown"])
    staged = publish.stage_publication(settings.out, context.run.run_id, built["files"], {
        STAGED_META: json.dumps(meta), STAGED_ROWS: _parquet(built["published"]),
        STAGED_SCHOOLS: _parquet(built["school_urns"])})
    table, plans = built["table"], built["plans"]
    return dg.MaterializeResult(
        metadata={
            "staged": dg.MetadataValue.path(str(staged)),
            "files": len(built["files"]),
            "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in built["problems"]) or "none"),
            "plans": dg.MetadataValue.md("\n".join(f"- {p['intervention']} ({p['round']}): {p['text']}" for p in plans)
                                         or "no registered round is waiting for its first results"),
            "dagster/row_count": len(table),
            "dagster/column_schema": dg.TableSchema(
                columns=[dg.TableColumn(name, str(dtype)) for name, dtype in table.dtypes.items()]
            ),
            "preview": dg.MetadataValue.md(table.to_markdown(index=False)),
        }
    )


@dg.asset(
    group_name="publishing",
    kinds={"csv", "html"},
    deps=["staged_publication"],
    description="The publication in the output folder: this run's `staged_publication`, swapped in whole (one "
    "atomic folder swap) only after its blocking checks passed, so a failed check or run leaves the last good "
    "publication. Once swapped in, the publication's rows are appended to `evidence_history` (when any "
    "figure, school or status changed since the last one).",
)
@officer_step
def evidence_table(context: dg.AssetExecutionContext, settings: Settings, warehouse_db: Warehouse) -> dg.MaterializeResult:
    staged = publish.staged_folder(settings.out, context.run.run_id)
    files = publish.staged_files(staged)
    meta = json.loads((staged / STAGED_META).read_text(encoding="utf-8"))
    published = pd.read_parquet(staged / STAGED_ROWS)
    school_urns = pd.read_parquet(staged / STAGED_SCHOOLS)
    published_at, correction = dt.datetime.fromisoformat(meta["published_at"]), meta["correction"]
    with warehouse_db.connect() as con:
        _refuse_unsafe(con, files, meta["trials"])  # the blocking checks' tests, again at the swap
        # earlier rows keyed as the registry names the trials now (a rename keeping the old name as an alias)
        kept = history.as_registered(history.read_history(con), load_registry(trials_file(settings)))
        withdrawn = history.withdrawn_schools(con)
    try:
        publish.publish_folder(settings.out, files)
    finally:  # swapped in, or the swap failed (a full disk): the checked copy is no longer needed
        shutil.rmtree(staged, ignore_errors=True)
    with warehouse_db.connect() as con:
        history.confirm_disclosure_state(con, context.run.run_id)
    path = settings.out / "evidence_table.csv"
    context.log.info(f"evidence table written to {path}")
    unchanged = history.same_as_latest(kept, published, school_urns, withdrawn)
    publication_id = ""
    if not unchanged:  # only a publication that was swapped in is remembered
        with warehouse_db.connect() as con:
            publication_id = history.append_history(con, published, published_at, school_urns, withdrawn,
                                                    correction)
    shown = kept if unchanged else pd.concat(
        [kept, history.publication_frame(published, published_at, school_urns, withdrawn, correction)],
        ignore_index=True)
    changes = [] if unchanged else _changes(shown)
    for change in changes:
        context.log.info(f"since the last publication: {change}")
    ws = workspace.load(settings.workspace_dir) if settings.workspace_dir else None
    to_do = _officer_to_do(context, settings, warehouse_db, ws, published)
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "page": dg.MetadataValue.path(str(settings.out / "index.html")),
            "files": len(files),
            "officer_to_do": dg.MetadataValue.md(summary.as_markdown(to_do)),
            "publication_id": publication_id or "unchanged: no new history entry",
            "publications_kept": len(history.publications(shown)),
            "what_changed": dg.MetadataValue.md("\n".join(f"- {c}" for c in changes) or "nothing since the last publication"),
            "history": dg.MetadataValue.md(_history_markdown(shown, published)),
            "dagster/row_count": len(published),
        }
    )


def _inputs(con, settings: Settings) -> dict:
    """What a publication is made from, read from the warehouse in one go."""
    stored = con.execute(warehouse.sql("evidence_table")).df()
    # The contract's columns, then the published extras the table holds (status, registry columns);
    # the model's working columns (beta, var_school, ...) stay in the warehouse.
    extras = [c for c in stored.columns if c not in COLUMNS + EXTRA_COLUMNS and c in dictionary.BY_COLUMN]

    def optional(table: str, query: str | None = None) -> pd.DataFrame | None:
        return con.execute(warehouse.sql(query or table)).df() if warehouse.table_exists(con, table) else None

    registry = load_registry(trials_file(settings))
    return {
        "stored": stored,
        "table": stored[COLUMNS + EXTRA_COLUMNS + extras],
        "schools": con.execute(warehouse.sql("school_results")).df(),
        # No load_report before the first school's load (an empty extracts folder on day one).
        "load_report": change_sets.with_superseded(con, optional("load_report")) if warehouse.table_exists(con, "load_report")
        else loading.load_report_frame([]),
        "loaded_at": con.execute(warehouse.sql("data_date")).fetchall()[0][0],
        # With a registry in use, what the officer should act on goes beside the load report.
        "progress": optional("registry_progress"),
        "messages": optional("registry_messages"),
        "kept": history.as_registered(history.read_history(con), registry),
        "earlier": site.earlier_as_registered(history.earlier_disclosure(con), registry),
        "withdrawn": history.withdrawn_schools(con),
        "spellings": optional("trial_spellings", "merged_spellings"),
        "registry": registry,
        # Every delivered name passes the publication gate: a trial row whose name is neither
        # registered nor carried widely is not published (microtrials.publish.gate).
        "gate": publication_gate.from_warehouse(con, registry),
    }


def _build(inputs: dict, settings: Settings, now: dt.datetime, correction: str | None) -> dict:
    """The publication's files and the rows it publishes (as the history keeps them), from ``_inputs``."""
    table, withheld = publication_gate.withhold(inputs["table"], inputs["gate"])
    per_trial = _per_trial(inputs["schools"])
    kept, withdrawn, registry = inputs["kept"], inputs["withdrawn"], inputs["registry"]
    # The rows exactly as evidence_table.csv will hold them (after disclosure control): what the history
    # keeps and the pages plot. Disclosure control covers every table of this publication together and its
    # differences from the last ones (site.protected_publication): the same counts the pages then show.
    earlier = inputs["earlier"]
    previous = {**earlier.shown, **site.previous_counts(settings.out, kept, registry)}
    published, protected_schools, state = site.protection(table, per_trial, previous, earlier=earlier.states)
    # A school is named ("school 111109 joined") only when its own figures are published.
    school_urns = site.published_schools(published, protected_schools)
    published_at = now.replace(tzinfo=None)
    shown = kept if history.same_as_latest(kept, published, school_urns, withdrawn) else pd.concat(
        [kept, history.publication_frame(published, published_at, school_urns, withdrawn, correction)],
        ignore_index=True)
    # The planner's "schools of about N pupils" comes from published counts only.
    plans = (planner.plans_for_page(planner.round_plans(registry, site.with_published_counts(inputs["stored"],
                                                                                             published)),
                                    registry) if registry is not None else [])
    problems: list[str] = []
    ws = workspace.load(settings.workspace_dir) if settings.workspace_dir else None
    sending = workspace.send_details(ws.contact if ws else workspace.Contact(),
                                     list(registry.rounds) if registry is not None else [], now.date())
    files = site.build_site(table, per_trial, inputs["load_report"], _data_date(inputs["loaded_at"]),
                            now.strftime("%d %B %Y %H:%M UTC"), problems=problems, history=shown, plans=plans,
                            registry_rows=_registry_rows(inputs), spellings=inputs["spellings"], sending=sending,
                            registry=registry, gate=inputs["gate"], previous=previous, earlier=earlier.states,
                            withdrawn=site.withdrawn_counts(inputs["progress"]),
                            **({"area": ws.area} if ws else {}))
    return {"files": files, "table": table, "withheld": withheld, "published": published,
            "school_urns": school_urns, "problems": problems, "plans": plans, "disclosure": state,
            "shown": {**previous, **site.shown_counts(published, protected_schools)}}


def _per_trial(schools: pd.DataFrame) -> dict[tuple, pd.DataFrame]:
    """One school table per published row: per (intervention, outcome_measure), and per round once
    school_results carries rounds (site.build_site accepts either key)."""
    by = ["intervention", "outcome_measure"] + (["round"] if "round" in schools and schools["round"].notna().any() else [])
    return {
        tuple("" if pd.isna(k) else str(k) for k in keys): group[[c for c in group.columns if c in SCHOOL_COLUMNS
                                                                 or c in site.SCHOOL_PUBLISHED]].reset_index(drop=True)
        for keys, group in schools.groupby(by, dropna=False)
    }


def _registry_rows(inputs: dict) -> pd.DataFrame | None:
    progress, messages = inputs["progress"], inputs["messages"]
    if progress is not None and len(progress) or messages is not None and len(messages):
        return site.registry_report(messages, progress)
    return None


def _data_date(loaded_at: dt.datetime | None) -> str:
    return loaded_at.strftime("%d %B %Y") if loaded_at is not None else "no data loaded"


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _refuse_unsafe(con, files: dict[str, bytes], trials: int) -> None:
    """Raise (nothing published) when the staged files hold pupil identifiers or not one row per trial."""
    findings = publish.identifier_findings(files, publish.pupil_keys_in(con, files))
    if findings:
        raise MicrotrialsError(f"not published: pupil identifiers found in {findings}; the last good publication stays")
    published_rows = len(pd.read_csv(io.BytesIO(files["evidence_table.csv"]), encoding="utf-8-sig"))
    if published_rows != trials:
        raise MicrotrialsError(f"not published: {published_rows} rows for {trials} trials; the last good publication stays")


def _officer_to_do(context: dg.AssetExecutionContext, settings: Settings, warehouse_db: Warehouse,
                   ws: workspace.Workspace | None, published: pd.DataFrame) -> list[str]:
    """The officer's to-do list (microtrials.summary), as `microtrials run` prints it; blank [schools]
    settings of the workspace are also a warning in the run's log."""
    missing = ws.contact.missing() if ws else []
    if missing:
        context.log.warning(f"schools are not told {', '.join(missing)}: fill in [schools] in {ws.config_file}")
    with warehouse_db.connect() as con:
        facts = summary.gather(con, published, settings.extracts, settings.feedback, missing,
                               settings.demo,
                               str(settings.out / "registry_report.csv"))
    return summary.todo_lines(facts)


def _row_round(row: dict) -> str | None:
    value = row.get("round")
    return None if value is None or (isinstance(value, float) and value != value) or value == "" else str(value)


def _changes(shown: pd.DataFrame) -> list[str]:
    """What changed between the last two publications kept (rows new, changed or gone), in words."""
    kept = history.publications(shown)
    if not kept:
        return []
    return history.what_changed(kept[-2] if len(kept) > 1 else None, kept[-1])


def _history_markdown(shown: pd.DataFrame, published: pd.DataFrame) -> str:
    """Per published row, its estimate at each of the latest publications (the cumulative plot as a table)."""
    parts = []
    for row in published.to_dict("records"):
        found = history.trial_history(shown, str(row["intervention"]), str(row["outcome_measure"]), _row_round(row))
        if found.rows.empty:
            continue
        rows = found.rows.tail(HISTORY_ROWS_SHOWN)
        columns = [c for c in ("published_at", "effect_size", "ci_low", "ci_high", "months_progress", "schools",
                               "evidence_strength", "status") if c in rows]
        label = f"{row['intervention']} ({row['outcome_measure']}{', ' + _row_round(row) if _row_round(row) else ''})"
        parts.append(f"**{label}**: {found.alt}\n\n" + rows[columns].to_markdown(index=False, floatfmt=".3f"))
    return "\n\n".join(parts) or "no publication kept yet"
