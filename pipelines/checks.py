"""Asset checks: what must hold before numbers are published (blocking) and what an officer should look at (WARN).

Blocking checks guard what no run may publish wrongly: pupil identifiers, one row per trial, every
file accounted for. What happens to one trial (not estimable yet, not refreshed) is data in that
trial's row, reported by WARN checks: it never stops the other trials publishing. Each check's
description says what a failure means; README "For officers" says what to do.
"""


from collections import Counter
from pathlib import Path

import dagster as dg
import pandas as pd

from microtrials.publish import gate as publication_gate
from microtrials.publish import publish
from microtrials.ingest import warehouse
from microtrials.guidance import READY_MIN_SCHOOLS_BOTH_ARMS
from microtrials.ingest.trial_key import TrialKey, plain_key
from microtrials.ingest.registry import load_registry
from pipelines.assets.registry import trials_file
from pipelines.partitions import content_hash, extract_files, files_by_school
from pipelines.resources import Settings, Warehouse

# A school whose extract has more than this share of rows quarantined is flagged (WARN): the
# file probably has a systematic problem (a shifted column, a wrong code list) worth a call.
QUARANTINE_RATE_LIMIT = 0.05
# Two-stage pooling and a between-school SD need at least two schools with pupils in both arms.
MIN_SCHOOLS_BOTH_ARMS = READY_MIN_SCHOOLS_BOTH_ARMS
IDENTIFIER_COLUMNS = publish.IDENTIFIER_COLUMNS


def _table(con, name: str) -> pd.DataFrame | None:
    """The rows of a warehouse table through its query `sql/<name>.sql`, or None before it exists."""
    return con.execute(warehouse.sql(name)).df() if warehouse.table_exists(con, name) else None


def _md(frame: pd.DataFrame) -> dg.MetadataValue:
    return dg.MetadataValue.md(frame.to_markdown(index=False) if len(frame) else "(none)")


def _run_schools(context: dg.AssetCheckExecutionContext) -> list[str] | None:
    """The school partitions this run loaded, or None when the run is not partitioned (all schools)."""
    try:
        if context.has_partition_key or context.has_partition_key_range:
            return list(context.partition_keys)
    except Exception:  # an unpartitioned check in a run without partitions
        return None
    return None


@dg.asset_check(
    asset="pupils",
    blocking=True,
    description="Every extract file of the schools this run loaded (every file, when run on its own) has "
    "a `deliveries` row for its exact content: loaded, or rejected with a reason. Fails when a file was "
    "skipped or changed during the load; trial_results is then not refreshed from a partial load.",
)
def every_file_loaded_or_rejected(
    context: dg.AssetCheckExecutionContext, settings: Settings, warehouse_db: Warehouse
) -> dg.AssetCheckResult:
    schools = _run_schools(context)
    if schools is None:
        files = extract_files(settings.extracts)
    else:
        by_school = files_by_school(settings.extracts)
        files = [p for s in schools for p in by_school.get(s, [])]
    with warehouse_db.connect() as con:
        deliveries = _table(con, "deliveries")
    # Text keys on both sides, also when either is empty (no files yet: pandas would guess float64).
    expected = pd.DataFrame(
        {"file_name": [p.name for p in files], "delivery_id": [content_hash(p) for p in files]}, dtype=object
    )
    if deliveries is None:
        deliveries = pd.DataFrame(columns=["file_name", "delivery_id", "status", "reason"], dtype=object)
    done = deliveries[
        deliveries["status"].isin(["loaded", "held", "partly held"])
        | ((deliveries["status"] == "rejected") & deliveries["reason"].fillna("").astype(str).str.strip().ne(""))
    ][["file_name", "delivery_id"]].astype(object).drop_duplicates()
    accounted = expected.merge(done, how="left", indicator=True)
    missing = accounted.loc[accounted["_merge"] == "left_only", ["file_name"]]
    return dg.AssetCheckResult(
        passed=missing.empty,
        description=None if missing.empty else f"{len(missing)} file(s) neither loaded nor rejected with a reason",
        metadata={"files_checked": len(expected), "files_not_accounted_for": _md(missing)},
    )


@dg.asset_check(
    asset="pupils",
    description=f"Per school, the share of delivered rows quarantined is at most {QUARANTINE_RATE_LIMIT:.0%} "
    "(WARN): above that the file probably has a systematic fault worth raising with the school.",
)
def quarantine_rate_per_school(warehouse_db: Warehouse) -> dg.AssetCheckResult:
    with warehouse_db.connect() as con:
        report = _table(con, "load_report")
    if report is None or report.empty:
        return dg.AssetCheckResult(passed=True, metadata={"schools": 0})
    read = report[(report["status"] != "rejected") & (report["school_urn"].fillna("") != "")]
    per_school = read.groupby("school_urn", as_index=False)[["rows_read", "rows_quarantined"]].sum()
    per_school["quarantine_rate"] = per_school["rows_quarantined"] / per_school["rows_read"].where(
        per_school["rows_read"] > 0
    )
    over = per_school[per_school["quarantine_rate"] > QUARANTINE_RATE_LIMIT]
    return dg.AssetCheckResult(
        passed=over.empty,
        severity=dg.AssetCheckSeverity.WARN,
        description=None if over.empty else f"{len(over)} school(s) above {QUARANTINE_RATE_LIMIT:.0%} quarantined",
        metadata={
            "schools": len(per_school),
            "highest_rate": float(per_school["quarantine_rate"].max(skipna=True) or 0.0),
            "schools_over_limit": _md(over.round({"quarantine_rate": 4})),
        },
    )


def _trial_names(frame: pd.DataFrame) -> list[str]:
    rounds = frame["round"] if "round" in frame.columns else pd.Series([None] * len(frame), index=frame.index)
    return [f"{i} / {o}" + ("" if r is None or pd.isna(r) or not str(r) else f" / {r}")
            for i, o, r in zip(frame["intervention"], frame["outcome_measure"], rounds)]


def _first_note(notes: object) -> str:
    """The plain reason a not_estimable or not_refreshed row carries first in its notes."""
    text = "" if notes is None or (isinstance(notes, float) and pd.isna(notes)) else str(notes)
    return text.split(";")[0].strip() or "no reason recorded"


def _with_reasons(frame: pd.DataFrame) -> pd.DataFrame:
    """intervention, outcome_measure and the reason (first note) of each row."""
    notes = frame["notes"] if "notes" in frame else pd.Series([None] * len(frame), index=frame.index)
    return pd.DataFrame(
        {"intervention": frame["intervention"], "outcome_measure": frame["outcome_measure"],
         **({"round": frame["round"]} if "round" in frame else {}),
         "reason": [_first_note(n) for n in notes]}
    )


def _listing(frame: pd.DataFrame, limit: int = 5) -> str:
    """'A / B (reason); C / D (reason)' for the first ``limit`` rows, then how many more."""
    items = [f"{name} ({reason})" for name, reason in zip(_trial_names(frame), frame["reason"])]
    more = f"; and {len(items) - limit} more" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


@dg.asset_check(
    asset="trial_results",
    description="Every trial that can be estimated was refreshed in this run (WARN). A trial whose model "
    "failed numerically keeps its last published row, marked `not_refreshed` with the reason; the other "
    "trials still publish. Lists those trials with their reasons.",
)
def trials_refreshed(warehouse_db: Warehouse) -> dg.AssetCheckResult:
    with warehouse_db.connect() as con:
        results = _table(con, "trial_results")
    if results is None or results.empty:
        return dg.AssetCheckResult(passed=True, severity=dg.AssetCheckSeverity.WARN, metadata={"trials": 0})
    if "status" in results:
        stale = results[results["status"] == "not_refreshed"]
    elif "converged" in results:  # before trial_results had a status column
        stale = results[~results["converged"].fillna(False).astype(bool)]
    else:
        stale = results.iloc[0:0]
    stale = _with_reasons(stale)
    return dg.AssetCheckResult(
        passed=stale.empty,
        severity=dg.AssetCheckSeverity.WARN,
        description=None if stale.empty else f"{len(stale)} trial(s) not refreshed, their last published "
        f"figures stay: {_listing(stale)}",
        metadata={"trials": len(results), "not_refreshed": _md(stale)},
    )


@dg.asset_check(
    asset="trial_results",
    description=f"Each trial can be estimated: at least {MIN_SCHOOLS_BOTH_ARMS} schools with pupils in both arms "
    "(WARN). A trial that cannot yet be estimated is published as `not_estimable` with blank figures and "
    "the reason; lists those trials in plain words.",
)
def trials_have_two_schools(warehouse_db: Warehouse) -> dg.AssetCheckResult:
    with warehouse_db.connect() as con:
        results = _table(con, "trial_results")
    if results is None or results.empty:
        return dg.AssetCheckResult(passed=True, severity=dg.AssetCheckSeverity.WARN, metadata={"trials": 0})
    if "status" in results:
        few = results[results["status"] == "not_estimable"]
    elif "schools_both_arms" in results:  # before trial_results had a status column
        few = results[results["schools_both_arms"].fillna(0) < MIN_SCHOOLS_BOTH_ARMS]
    else:
        few = results.iloc[0:0]
    listed = _with_reasons(few)
    if "schools_both_arms" in few:
        listed["schools_both_arms"] = few["schools_both_arms"].to_numpy()
    return dg.AssetCheckResult(
        passed=listed.empty,
        severity=dg.AssetCheckSeverity.WARN,
        description=None if listed.empty else f"{len(listed)} trial(s) cannot be estimated yet and are "
        f"published without figures: {_listing(listed)}",
        metadata={"trials": len(results), "not_estimable": _md(listed)},
    )


def trial_names(frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(intervention, outcome_measure, round) per row as sent, round blank without a registry: a
    published cell's neutralising quote undone (publish.published_text), so "'@Home reading" read
    back from a CSV is "@Home reading" again."""
    rounds = frame["round"] if "round" in frame.columns else pd.Series([None] * len(frame), index=frame.index)

    def text(value: object) -> str:
        return "" if value is None or (not isinstance(value, str) and pd.isna(value)) \
            else publish.published_text(str(value))

    return [(text(i), text(o), text(r)) for i, o, r in zip(frame["intervention"], frame["outcome_measure"], rounds)]


def trial_keys(frame: pd.DataFrame) -> list[TrialKey]:
    """:func:`trial_names` as the one trial key (:func:`microtrials.ingest.trial_key.plain_key`) every
    check compares: "@Home reading", a round named "-" or "ＡＢＣ" equal to themselves wherever read."""
    return [plain_key(i, o, r) for i, o, r in trial_names(frame)]


def publication_folder(context: dg.AssetCheckExecutionContext, settings: Settings) -> Path:
    """The publication a check judges: the one this run staged (before it may be swapped in), or the
    published folder when the check runs on its own."""
    try:
        run_id = context.run.run_id
    except dg.DagsterError:  # a context built outside a run (a test calling the check)
        return settings.out
    staged = publish.staged_folder(settings.out, run_id) / publish.STAGED_FILES
    return staged if staged.is_dir() else settings.out


@dg.asset_check(
    asset="staged_publication",
    blocking=True,
    description="The staged evidence_table.csv has exactly one row per trial in `trial_results`: the same "
    "(intervention, outcome_measure, round) keys, none twice. Judged before the swap: when it fails, "
    "`evidence_table` does not run and the last good publication stays.",
)
def one_row_per_trial(
    context: dg.AssetCheckExecutionContext, settings: Settings, warehouse_db: Warehouse
) -> dg.AssetCheckResult:
    path = publication_folder(context, settings) / "evidence_table.csv"
    with warehouse_db.connect() as con:
        results = _table(con, "trial_results")
        gate = publication_gate.from_warehouse(con, load_registry(trials_file(settings)))
        delivered = warehouse.table_exists(con, "pupils") and bool(con.execute(warehouse.sql("name_carriers")).fetchmany(1))
    # rows whose names the publication gate withholds are not published (microtrials.publish.gate); a
    # warehouse with no pupils and no registry knows no name, and trial_results is then not the pipeline's.
    # Pupils of one school only carry no name widely: its trial is withheld, as the publication does.
    if results is not None and (gate.carried or gate.registered or delivered):
        results = publication_gate.withhold(results, gate)[0]
    trials = [] if results is None else trial_keys(results)
    if not path.is_file():
        return dg.AssetCheckResult(passed=False, description=f"{path} was not written", metadata={"trials": len(trials)})
    table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    published = trial_keys(table)
    shown = dict(zip(published, trial_names(table))) | ({} if results is None else
                                                        dict(zip(trials, trial_names(results))))
    counts = Counter(published)
    twice = sorted(shown[k] for k, n in counts.items() if n > 1)
    missing = sorted(shown[k] for k in set(trials) - set(published))
    extra = sorted(shown[k] for k in set(published) - set(trials))
    passed = not twice and not missing and not extra and len(published) == len(trials)
    problems = ([f"published twice: {twice}"] if twice else []) + ([f"not published: {missing}"] if missing else []) \
        + ([f"not a trial: {extra}"] if extra else [])
    return dg.AssetCheckResult(
        passed=passed,
        description=None if passed else f"{len(published)} published row(s) for {len(trials)} trial(s); " + "; ".join(problems),
        metadata={"published_rows": len(published), "trials": len(trials), "path": dg.MetadataValue.path(str(path))},
    )


@dg.asset_check(
    asset="staged_publication",
    blocking=True,
    description="No file of the staged publication holds a pupil_key of the warehouse or a column named "
    f"{' or '.join(IDENTIFIER_COLUMNS)} (CSV headers, HTML table headers). Judged before the swap: when it "
    "fails, `evidence_table` does not run and the last good publication stays.",
)
def no_pupil_identifiers_published(
    context: dg.AssetCheckExecutionContext, settings: Settings, warehouse_db: Warehouse
) -> dg.AssetCheckResult:
    folder = publication_folder(context, settings)
    findings = published_identifiers(folder, warehouse_db)
    return dg.AssetCheckResult(
        passed=not findings,
        description=None if not findings else f"{len(findings)} file(s) of the publication hold pupil identifiers",
        metadata={
            "files_scanned": sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0,
            "findings": _md(pd.DataFrame(findings, columns=["file", "found"])),
        },
    )


def published_identifiers(out: Path, warehouse_db: Warehouse) -> list[tuple[str, str]]:
    """(file, what) for each file under ``out`` holding a pupil_key of the warehouse or an identifier
    column name (the files' 64-hex-digit strings are looked up in `pupils`: publish.pupil_keys_in)."""
    if not Path(out).is_dir():
        return []
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(Path(out).rglob("*")) if p.is_file()}
    with warehouse_db.connect() as con:
        pupil_keys = publish.pupil_keys_in(con, files)
    return publish.identifier_findings(files, pupil_keys)


ALL_CHECKS = [
    every_file_loaded_or_rejected,
    quarantine_rate_per_school,
    trials_refreshed,
    trials_have_two_schools,
    one_row_per_trial,
    no_pupil_identifiers_published,
]
