"""School extracts -> the warehouse's pupils, quarantine and deliveries tables, one partition per school."""

# Each school partition gets an observation carrying that school's own figures only (its files, rows,
# reasons, trials, status, where its feedback file is), so a run's storage grows linearly with the
# number of schools; the run-wide load report goes to the warehouse's `load_report` table (and the
# published `load_report.csv`), and the run's log gets one line of counts.

import warnings
from collections import Counter
from pathlib import Path

import dagster as dg
import pandas as pd

from microtrials.ingest import feedback
from microtrials.publish import history
from microtrials.ingest import loading
from microtrials.ingest import privacy
from microtrials.ingest import warehouse
from microtrials.errors import MicrotrialsError
from microtrials.ingest.trial_key import TrialKeys
from microtrials.ingest.registry import load_registry
from pipelines.assets.registry import trials_file
from pipelines.launch import officer_step
from pipelines.partitions import files_by_school, schools_partitions
from pipelines.resources import Settings, Warehouse

PUPILS_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("school_urn", "VARCHAR", description="the school's 6-digit URN"),
        dg.TableColumn("pupil_key", "VARCHAR", description="HMAC-SHA256 of the school's pupil_id (MICROTRIALS_PUPIL_KEY)"),
        dg.TableColumn("intervention", "VARCHAR"),
        dg.TableColumn("outcome_measure", "VARCHAR"),
        dg.TableColumn("arm", "VARCHAR", description="'intervention' or 'control'"),
        dg.TableColumn("outcome", "DOUBLE", description="post-test score; NULL = no post-test (attrition)"),
        dg.TableColumn("baseline", "DOUBLE"),
        dg.TableColumn("fsm", "BOOLEAN"),
        dg.TableColumn("gender", "VARCHAR"),
        dg.TableColumn("year_group", "INTEGER"),
        dg.TableColumn("send", "BOOLEAN"),
        dg.TableColumn("source_file", "VARCHAR"),
        dg.TableColumn("source_line", "INTEGER", description="line as a spreadsheet shows it (header = 1)"),
        dg.TableColumn("delivery_id", "VARCHAR", description="sha256 of the delivered file"),
        dg.TableColumn("round", "VARCHAR", description="the round the row sent (the extract's optional `round` "
                       "column; blank: none); the analysis places the row by it"),
        dg.TableColumn("key_round", "VARCHAR", description="the trial key's round as resolved when the row was "
                       "loaded (the registered round, else the round sent, else ''); NULL for rows loaded before "
                       "it was kept; only planning which rows a re-delivery replaces reads it"),
    ]
)

# A partition's reasons are cut to this many characters in its metadata (the full text is in the
# warehouse's `deliveries` table and the school's feedback file).
REASON_CHARS = 300

# BackfillPolicy is marked beta in Dagster 1.13; it is what lets one run load many schools.
warnings.filterwarnings("ignore", message=".*backfill_policy.*", category=dg.BetaWarning)


@dg.asset(
    group_name="loading",
    kinds={"duckdb", "csv"},
    pool="warehouse",
    partitions_def=schools_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    metadata={"dagster/column_schema": PUPILS_SCHEMA},
    description="One partition per school (its URN; `file-<name>` for a file with no usable URN): the "
    "school's extract file(s) in the extracts folder, validated, pseudonymised and loaded into the "
    "`pupils` table (bad rows to `quarantine`, one `deliveries` row per file). Each partition's "
    "`status` says what its files did: `loaded`, `unchanged`, `held` (a change that would lose more than "
    "half of a trial round's pupils or scores: nothing of it applied, the earlier rows stay as they were "
    "until `microtrials accept FILE`), `partly rejected`, `rejected` (nothing new loaded; the rows loaded "
    "before stay) or `no file`. `changes` says, one line per school trial round, what the files did.",
)
@officer_step
def pupils(context: dg.AssetExecutionContext, settings: Settings, warehouse_db: Warehouse) -> dg.MaterializeResult:
    by_school = files_by_school(settings.extracts)
    # A run without a partition (e.g. `dg.materialize` of every asset) loads every school's files.
    partitioned = context.has_partition_key or context.has_partition_key_range
    schools = list(context.partition_keys) if partitioned else sorted(by_school)  # the run's schools, read once
    files = sorted((p for s in schools for p in by_school.get(s, [])), key=lambda p: p.name)
    ignored = loading.ignored_entries(settings.extracts) if settings.extracts.is_dir() else []
    reports, written, held = _load(context, settings, warehouse_db, files, ignored, schools)
    statuses: Counter = Counter()
    if partitioned:
        by_name = {r.file_name: r for r in reports}
        held_by_school = {urn: group for urn, group in held.groupby("school_urn", sort=False)}
        for school in schools:
            school_reports = [by_name[p.name] for p in by_school.get(school, []) if p.name in by_name]
            metadata = school_metadata(school, school_reports, held_by_school.get(school, held.iloc[0:0]), settings.feedback)
            statuses[metadata["status"]] += 1
            # An observation per school, not add_asset_metadata(partition_key=...): Dagster 1.13 lists
            # every partition of the run's range on each such call (docs/deployment.md, "Partition look-ups").
            context.log_event(dg.AssetObservation(asset_key=context.asset_key, partition=school, metadata=metadata))
    summary = {
        "files": len(reports),
        "files_rejected": sum(r.status == "rejected" for r in reports),
        "entries_ignored": len(ignored),
        "feedback_files_written": len(written),
    }
    context.log.info(
        f"{len(schools)} school partition(s): "
        + ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
        + f"; {summary['files']} file(s), {summary['files_rejected']} rejected, {len(ignored)} folder entr"
        f"{'y' if len(ignored) == 1 else 'ies'} ignored, {len(written)} feedback file(s) in {settings.feedback}"
    )
    # Metadata here would be copied onto every partition: only a run without partitions gets the counts.
    return dg.MaterializeResult(metadata=None if partitioned else summary)


def _load(context: dg.AssetExecutionContext, settings: Settings, warehouse_db: Warehouse, files: list[Path],
          ignored: list, schools: list[str]) -> tuple[list, list, pd.DataFrame]:
    """Load ``files`` into the warehouse: (file reports, feedback files written, pupils held per school and trial)."""
    key = privacy.pupil_key_from_env(settings.extracts)
    feedback.check_private(settings.feedback, settings.out)  # before anything is loaded
    with warehouse_db.connect() as con:
        note = privacy.check_key_unchanged(con, key, privacy.new_key_allowed())
        if note:
            context.log.warning(note)
        _store_current_rounds(con, settings)
        reports = loading.load_files(con, files, key, keys=_trial_keys(settings, context), run_id=context.run_id)
        present = {p.name for p in settings.extracts.iterdir()} if settings.extracts.is_dir() else set()
        _update_load_report(con, loading.load_report_frame(reports + ignored),
                            {p.name for p in files} | {r.file_name for r in ignored}, present)
        try:
            written = feedback.write_feedback(con, reports, {p.name: p for p in files}, settings.feedback, settings.out)
        except MicrotrialsError as exc:  # the load itself is committed: say so, and carry on
            context.log.error(str(exc))
            written = []
        urns = [s for s in schools if not s.startswith("file-")]
        held = con.execute(warehouse.sql("school_summary"), {"urns": urns}).df()
    return reports, written, held


def _store_current_rounds(con, settings: Settings) -> None:
    """Make the registry this run reads the warehouse's current rounds before loading, so the load
    judges scores against the ranges it declares (microtrials.ingest.plausibility); an unreadable registry
    leaves the last one stored (``_trial_keys`` warns)."""
    try:
        registry = load_registry(trials_file(settings))
    except MicrotrialsError:
        return
    history.store_rounds(con, registry)


def _trial_keys(settings: Settings, context: dg.AssetExecutionContext) -> TrialKeys | None:
    """The trial keys of the registry this run reads (so a re-delivery replaces what this run's
    analysis counts as the same trial round); None (the warehouse's last registry) when it cannot be read."""
    try:
        parsed = load_registry(trials_file(settings))
    except MicrotrialsError as exc:
        context.log.warning(f"loading places rows by the registry last stored in the warehouse: {exc}")
        return None
    return TrialKeys(parsed.rounds if parsed is not None else ())  # no file: every name is its own trial


def school_status(reports: list[loading.FileReport]) -> str:
    """One word for what a school's files did this run (see the asset's description)."""
    if not reports:
        return "no file"
    kinds = {r.status for r in reports}
    if kinds & {"held", "partly held"}:
        return "held"
    some_held = any(r.trials_rejected for r in reports if r.status != "rejected")
    if kinds == {"rejected"}:
        return "rejected"
    if "rejected" in kinds or some_held:
        return "partly rejected"
    if kinds == {"unchanged"}:
        return "unchanged"
    return "loaded"


def school_metadata(school: str, reports: list[loading.FileReport], held: pd.DataFrame, feedback_dir: Path) -> dict:
    """The figures of one school partition: its own files, rows, reasons and trials, nothing else."""
    status = school_status(reports)
    by_reason: Counter = Counter()
    for report in reports:
        by_reason.update(report.quarantined_by_reason)
    files = pd.DataFrame(
        [
            {
                "file": r.file_name,
                "status": r.status,
                "rows read": r.rows_read,
                "loaded": r.rows_loaded,
                "set aside": r.rows_quarantined,
                "warnings": getattr(r, "rows_with_warnings", 0),
                "reason": _cut(r.reason or ""),
            }
            for r in reports
        ]
    )
    trials = held[["intervention", "outcome_measure", "pupils"]].rename(columns={"pupils": "pupils held"})
    fix = [
        str(feedback.feedback_path(feedback_dir, r.school_urn, r.file_name))
        for r in reports
        if r.status != "unchanged"
        and (r.rows_quarantined or getattr(r, "rows_with_warnings", 0) or r.trials_rejected or r.trials_held)
    ]
    metadata = {
        "status": status,
        "school": school,
        "dagster/row_count": int(held["pupils"].sum()) if len(held) else 0,
        # the school's files as they stand (an unchanged file keeps the figures of its load)
        "rows_read": sum(r.rows_read for r in reports),
        "rows_loaded": sum(r.rows_loaded for r in reports),
        "rows_quarantined": sum(r.rows_quarantined for r in reports),
        "rows_with_warnings": sum(getattr(r, "rows_with_warnings", 0) for r in reports),
        "files": dg.MetadataValue.md(markdown_table(files) if len(files) else "(no file in the extracts folder: the rows loaded before are kept)"),
        "quarantined_by_reason": dg.MetadataValue.md(
            "\n".join(f"- {reason}: {n}" for reason, n in sorted(by_reason.items())) or "(none)"
        ),
        "trials": dg.MetadataValue.md(markdown_table(trials) if len(trials) else "(none)"),
        "changes": dg.MetadataValue.md("\n".join(f"- {line}" for r in reports for line in r.changes)
                                       or "(no change to the warehouse)"),
    }
    if fix:
        metadata["what_to_fix"] = dg.MetadataValue.text("; ".join(fix))
    return metadata


def markdown_table(frame: pd.DataFrame) -> str:
    """A small frame as a Markdown table (what ``DataFrame.to_markdown`` gives, without its
    per-call cost, which at thousands of school partitions is most of the metadata's time)."""
    def cell(value: object) -> str:
        return "" if value is None or (isinstance(value, float) and value != value) else str(value).replace("|", "\\|").replace("\n", " ")

    numeric = [pd.api.types.is_numeric_dtype(dtype) for dtype in frame.dtypes]
    lines = ["| " + " | ".join(cell(c) for c in frame.columns) + " |",
             "|" + "|".join("---:" if n else ":---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False, name=None)]
    return "\n".join(lines)


def _cut(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 3] + "..."


def _update_load_report(con, report: pd.DataFrame, loaded: set[str], present: set[str]) -> None:
    """The `load_report` table: the latest outcome of every entry now in the extracts folder.

    Rows for the files just loaded (and the entries ignored) replace their earlier rows; rows for
    entries no longer in the folder are dropped (the `deliveries` table keeps their history).
    """
    if warehouse.table_exists(con, "load_report"):
        earlier = con.execute(warehouse.sql("load_report")).df()
        if list(earlier.columns) == list(report.columns):  # else the report's shape changed: start afresh
            earlier = earlier[~earlier["file_name"].isin(loaded) & earlier["file_name"].isin(present)]
            if len(earlier):
                report = pd.concat([earlier.astype(report.dtypes.to_dict()), report], ignore_index=True)
    report = report.sort_values("file_name", kind="stable").reset_index(drop=True)
    warehouse.save_frame(con, "load_report", report)
