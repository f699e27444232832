"""Publishing: the evidence table, per-school CSVs, load report and the web page, swapped in atomically."""

import datetime as dt
import io

import dagster as dg
import pandas as pd

from microtrials import dictionary, publish, site, warehouse
from microtrials.errors import MicrotrialsError
from microtrials.evidence_table import COLUMNS, EXTRA_COLUMNS, SCHOOL_COLUMNS
from pipelines.resources import Settings, Warehouse


@dg.asset(
    group_name="publishing",
    kinds={"csv", "html"},
    deps=["trial_results"],
    description="The publication in the output folder: evidence_table.csv (the contract's columns, "
    "one row per trial; every figure is a column of `trial_results`, made by "
    "microtrials.evidence_table.evidence_row), <trial>/schools.csv with small groups suppressed, "
    "load_report.csv and index.html with per-trial pages (microtrials.site.build_site). "
    "The whole folder is replaced in one swap, so a failed run leaves the last good one.",
)
def evidence_table(context: dg.AssetExecutionContext, settings: Settings, warehouse_db: Warehouse) -> dg.MaterializeResult:
    with warehouse_db.connect() as con:
        stored = con.execute(warehouse.sql("evidence_table")).df()
        # The contract's columns, then the published extras the table holds (status, registry columns);
        # the model's working columns (beta, var_school, ...) stay in the warehouse.
        extras = [c for c in stored.columns if c not in COLUMNS + EXTRA_COLUMNS and c in dictionary.BY_COLUMN]
        table = stored[COLUMNS + EXTRA_COLUMNS + extras]
        schools = con.execute(warehouse.sql("school_results")).df()
        load_report = con.execute(warehouse.sql("load_report")).df()
        loaded_at = con.execute(warehouse.sql("data_date")).fetchall()[0][0]
    per_trial = {
        (str(intervention), str(outcome_measure)): group[[c for c in group.columns if c in SCHOOL_COLUMNS
                                                          or c in site.SCHOOL_PUBLISHED]].reset_index(drop=True)
        for (intervention, outcome_measure), group in schools.groupby(["intervention", "outcome_measure"])
    }
    data_date = loaded_at.strftime("%d %B %Y") if loaded_at is not None else "no data loaded"
    run_date = dt.datetime.now(dt.timezone.utc).strftime("%d %B %Y %H:%M UTC")
    problems: list[str] = []
    files = site.build_site(table, per_trial, load_report, data_date, run_date, problems=problems)
    for problem in problems:  # one trial's trouble is reported, never a reason to stop the others
        context.log.warning(problem)
    # The blocking checks run again on the folder afterwards; here the same tests stop a bad
    # publication before it replaces the last good one.
    with warehouse_db.connect() as con:  # only the 64-hex strings the files hold are looked up
        pupil_keys = publish.pupil_keys_in(con, files)
    findings = publish.identifier_findings(files, pupil_keys)
    if findings:
        raise MicrotrialsError(f"not published: pupil identifiers found in {findings}; the last good publication stays")
    published_rows = len(pd.read_csv(io.BytesIO(files["evidence_table.csv"]), encoding="utf-8-sig"))
    if published_rows != len(table):
        raise MicrotrialsError(f"not published: {published_rows} rows for {len(table)} trials")
    publish.publish_folder(settings.out, files)
    path = settings.out / "evidence_table.csv"
    context.log.info(f"evidence table written to {path}")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "page": dg.MetadataValue.path(str(settings.out / "index.html")),
            "files": len(files),
            "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"),
            "dagster/row_count": len(table),
            "dagster/column_schema": dg.TableSchema(
                columns=[dg.TableColumn(name, str(dtype)) for name, dtype in table.dtypes.items()]
            ),
            "preview": dg.MetadataValue.md(table.to_markdown(index=False)),
        }
    )
