"""Publishing: the evidence table and load report as CSV in the output folder."""

import dagster as dg

from microtrials import publish, warehouse
from microtrials.evidence_table import COLUMNS
from pipelines.resources import Settings, Warehouse


@dg.asset(
    group_name="publishing",
    kinds={"csv"},
    deps=["trial_results"],
    description="evidence_table.csv (the contract's columns, one row per trial) and "
    "load_report.csv, written atomically to the output folder. Each figure is a column of the "
    "`trial_results` table, computed by microtrials.evidence_table.evidence_row.",
)
def evidence_table(context: dg.AssetExecutionContext, settings: Settings, warehouse_db: Warehouse) -> dg.MaterializeResult:
    with warehouse_db.connect() as con:
        table = con.execute(warehouse.sql("evidence_table")).df()[COLUMNS]
        load_report = con.execute(warehouse.sql("load_report")).df()
    path = settings.out / "evidence_table.csv"
    publish.write_csv_atomic(path, table)
    publish.write_csv_atomic(settings.out / "load_report.csv", load_report)
    context.log.info(f"evidence table written to {path}")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "dagster/row_count": len(table),
            "preview": dg.MetadataValue.md(table.to_markdown(index=False)),
        }
    )
