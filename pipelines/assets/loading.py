"""School extracts -> the warehouse's pupils, quarantine and deliveries tables, one partition per school."""

import warnings

import dagster as dg
import pandas as pd

from microtrials import loading, privacy, warehouse
from pipelines.partitions import extract_files, files_by_school, schools_partitions
from pipelines.resources import DEFAULT_EXTRACTS, Settings, Warehouse

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
    ]
)


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
    "`pupils` table (bad rows to `quarantine`, one `deliveries` row per file). A partition whose file "
    "has gone keeps the rows it loaded before.",
)
def pupils(context: dg.AssetExecutionContext, settings: Settings, warehouse_db: Warehouse) -> dg.MaterializeResult:
    key = privacy.pupil_key_from_env(settings.extracts, DEFAULT_EXTRACTS)
    by_school = files_by_school(settings.extracts)
    # A run without a partition (e.g. `dg.materialize` of every asset) loads every school's files.
    partitioned = context.has_partition_key or context.has_partition_key_range
    schools = list(context.partition_keys) if partitioned else sorted(by_school)
    files = sorted((p for s in schools for p in by_school.get(s, [])), key=lambda p: p.name)
    missing = [s for s in schools if s not in by_school]
    if missing:
        context.log.warning(
            f"no file in {settings.extracts} for {', '.join(missing)}: the rows loaded before are kept"
        )
    with warehouse_db.connect() as con:
        reports = loading.load_files(con, files, key)
        report = loading.load_report_frame(reports)
        _update_load_report(con, report, {p.name for p in files}, {p.name for p in extract_files(settings.extracts)})
        urns = [s for s in schools if not s.startswith("file-")]
        rows = con.execute(warehouse.sql("school_pupil_count"), {"urns": urns}).fetchall()[0][0]
        counts = con.execute(warehouse.sql("pupil_counts")).df()
        quarantined = con.execute(warehouse.sql("quarantine_for_files"), {"files": [p.name for p in files]}).df()
    rejected = report[report["status"] == "rejected"]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": int(rows),
            "dagster/column_schema": PUPILS_SCHEMA,
            "schools": dg.MetadataValue.text(", ".join(schools)),
            "files": len(reports),
            "files_rejected": len(rejected),
            "load_report": dg.MetadataValue.md(report.to_markdown(index=False)),
            "quarantined_rows": dg.MetadataValue.md(
                quarantined.to_markdown(index=False) if len(quarantined) else "(none)"
            ),
            "warehouse_trials": dg.MetadataValue.md(counts.to_markdown(index=False)),
        }
    )


def _update_load_report(con, report: pd.DataFrame, loaded: set[str], present: set[str]) -> None:
    """The `load_report` table: the latest outcome of every file now in the extracts folder.

    Rows for the files just loaded replace their earlier rows; rows for files no longer in the
    folder are dropped (the `deliveries` table keeps their history).
    """
    if warehouse.table_exists(con, "load_report"):
        earlier = con.execute(warehouse.sql("load_report")).df()
        if list(earlier.columns) == list(report.columns):  # else the report's shape changed: start afresh
            earlier = earlier[~earlier["file_name"].isin(loaded) & earlier["file_name"].isin(present)]
            if len(earlier):
                report = pd.concat([earlier.astype(report.dtypes.to_dict()), report], ignore_index=True)
    report = report.sort_values("file_name", kind="stable").reset_index(drop=True)
    warehouse.save_frame(con, "load_report", report)
