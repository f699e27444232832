"""The trial registry asset: read trials.csv, keep every version, store the current rounds and bad rows; its checks."""

import hashlib
import os
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pandas as pd

from microtrials.publish import history
from microtrials.stats import planner
from microtrials.ingest import change_sets, warehouse
from microtrials.ingest.registry import (
    decode,
    match_deliveries,
    messages_frame,
    no_registry_warning,
    plan_progress,
    read_registry,
    registry_bytes,
    registry_path,
)
from pipelines.launch import officer_step
from pipelines.resources import Settings, Warehouse


def trials_file(settings: Settings) -> Path:
    """Where the registry is: Settings.trials_file (--trials FILE, MICROTRIALS_TRIALS), else
    <extracts>/../trials.csv (microtrials.ingest.registry.registry_path)."""
    return registry_path(settings.extracts, settings.trials_file or None, os.environ)


def _md(frame: pd.DataFrame) -> dg.MetadataValue:
    return dg.MetadataValue.md(frame.to_markdown(index=False) if len(frame) else "(none)")


@dg.asset(
    group_name="loading",
    kinds={"duckdb", "python"},
    pool="warehouse",
    deps=["pupils"],
    description="The trial registry trials.csv (one row per trial round; docs/registry.md), read and "
    "validated like an extract: bad rows are named (line, column, what to do) and left out. Every "
    "version read is kept in `registry_versions` (sha256, first read, text); the current rounds are "
    "in `registry_rounds` and the bad rows in `registry_problems`. The metadata shows each round's "
    "schools planned, delivered and awaited (URNs) against the pupils loaded so far, and what the "
    "officer should act on (interventions not in the registry, schools not in the plan). With no file the run goes on and "
    "every intervention name is taken as a trial, as before.",
)
@officer_step
def registry(context: dg.AssetExecutionContext, settings: Settings, warehouse_db: Warehouse) -> dg.MaterializeResult:
    path = trials_file(settings)
    with warehouse_db.connect() as con:
        history.ensure_tables(con)
        if not path.exists() and not path.is_symlink():  # anything else at the path is read, or refused
            history.clear_registry(con)
            warning = no_registry_warning(path)
            context.log.warning(warning)
            return dg.MaterializeResult(metadata={"path": str(path), "registry": "none", "warning": warning,
                                                  "dagster/row_count": 0})
        # A registry that cannot be read (or is over its size limit) fails this step with the reason,
        # so nothing downstream runs and the last publication stays (RegistryUnreadable).
        data = registry_bytes(path)
        parsed = read_registry(data, str(path))
        text, _ = decode(data)
        new = history.store_registry(con, parsed, text, datetime.now(timezone.utc).replace(tzinfo=None))
        versions = len(con.execute(warehouse.sql("registry_versions")).fetchall())
        rounds = con.execute(warehouse.sql("registry_rounds")).df()
        problems = con.execute(warehouse.sql("registry_problems")).df()
        combos = (con.execute(warehouse.sql("delivered_combos")).df() if warehouse.table_exists(con, "pupils")
                  else None)
        results = con.execute(warehouse.sql("trial_results")).df() if warehouse.table_exists(con, "trial_results") else None
        withdrawn = change_sets.withdrawn_from_plan(con, parsed.rounds)
    plan = messages = None
    if combos is not None:
        matching = match_deliveries(parsed, combos)
        plan = plan_progress(parsed, matching.combos, withdrawn=withdrawn)
        messages = messages_frame(matching.messages)
    # What each registered round with no results yet could detect (microtrials plan, worded).
    plans = planner.plans_for_page(planner.round_plans(parsed, results), parsed)
    for problem in parsed.problems:
        context.log.warning(problem.message)
    if parsed.encoding_note:
        context.log.warning(parsed.encoding_note)
    return dg.MaterializeResult(
        metadata={
            "path": str(path),
            "sha256": parsed.sha256,
            "encoding": parsed.encoding,
            "new_version": new,
            "versions_kept": int(versions),
            "rows_read": parsed.rows_read,
            "rows_left_out": len({p.line for p in parsed.problems if not p.kept}),
            "dagster/row_count": len(parsed.rounds),
            "rounds": _md(rounds[["intervention", "round", "outcome_measure", "start_date", "end_date", "schools",
                                   "toolkit_strand", "national_months", "cost_per_pupil", "cost_rating"]]),
            "problems": _md(problems[["line", "column_name", "problem", "action"]]),
            **({} if plan is None else {
                "schools_awaited": int(plan["awaited"].sum()),
                "plan": _md(plan[["intervention", "round", "end_date", "planned", "delivered", "awaited",
                                  "awaited_urns", "withdrawn_urns", "unplanned_urns", "status_note"]]),
                "officer_messages": _md(messages[["level", "rule", "message"]]),
            }),
            "plans": dg.MetadataValue.md("\n".join(f"- {p['intervention']} ({p['round']}): {p['text']}" for p in plans)
                                         or "every registered round has results"),
        }
    )


@dg.asset_check(
    asset="registry",
    description="Every row of trials.csv is usable. WARN lists each bad row (line, column, what is wrong, "
    "what to do); those rows are left out and the rest of the registry is used.",
)
def registry_rows_valid(warehouse_db: Warehouse) -> dg.AssetCheckResult:
    with warehouse_db.connect() as con:
        history.ensure_tables(con)
        problems = con.execute(warehouse.sql("registry_problems")).df()
    return dg.AssetCheckResult(
        passed=problems.empty,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"rows_left_out": int(problems["line"].nunique()) if len(problems) else 0,
                  "problems": _md(problems[["line", "column_name", "problem", "action"]])},
    )


@dg.asset_check(
    asset="registry",
    blocking=True,
    description="The registry in use is kept: the current trials.csv's sha256 is in `registry_versions`, "
    "so every published result can be traced to the plan it was judged against. Passes with no registry.",
)
def registry_version_kept(settings: Settings, warehouse_db: Warehouse) -> dg.AssetCheckResult:
    path = trials_file(settings)
    if not path.is_file():
        return dg.AssetCheckResult(passed=True, metadata={"registry": "none", "path": str(path)})
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    with warehouse_db.connect() as con:
        kept = history.version_kept(con, sha)
    return dg.AssetCheckResult(
        passed=bool(kept),
        description=None if kept else "trials.csv changed since the registry asset ran; materialize `registry` again",
        metadata={"sha256": sha, "path": str(path)},
    )


REGISTRY_CHECKS = [registry_rows_valid, registry_version_kept]
