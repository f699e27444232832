"""School extracts -> the warehouse's pupils, quarantine and deliveries tables."""

import dagster as dg

from microtrials import loading, privacy, warehouse
from pipelines.resources import DEFAULT_EXTRACTS, Settings, Warehouse


@dg.asset(
    group_name="loading",
    kinds={"duckdb", "csv"},
    pool="warehouse",
    description="Every school extract in the extracts folder, validated, pseudonymised and loaded "
    "into the `pupils` table (bad rows to `quarantine`, one `deliveries` row per file).",
)
def pupils(settings: Settings, warehouse_db: Warehouse) -> dg.MaterializeResult:
    key = privacy.pupil_key_from_env(settings.extracts, DEFAULT_EXTRACTS)
    with warehouse_db.connect() as con:
        reports = loading.load_folder(con, settings.extracts, key)
        report = loading.load_report_frame(reports)
        warehouse.save_frame(con, "load_report", report)
        counts = con.execute(warehouse.sql("pupil_counts")).df()
    rejected = report[report["status"] == "rejected"]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": int(counts["pupils"].sum()),
            "files": len(reports),
            "files_rejected": len(rejected),
            "schools": int(counts["schools"].max() if len(counts) else 0),
            "trials": dg.MetadataValue.md(counts.to_markdown(index=False)),
            "load_report": dg.MetadataValue.md(report.to_markdown(index=False)),
        }
    )
