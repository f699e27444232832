"""The warehouse tables officers and evaluators read, in the asset graph: specs with column descriptions, observed after each run.

The tables are written by the `pupils` and `trial_results` assets (their library code); here they
are declared as observable assets downstream of their writer, so the UI shows their lineage, their
columns (descriptions from `sql/schema.sql` and the contracts in `docs/extract-format.md`) and,
after each run, their row counts. Observing reads the warehouse and writes nothing.
"""

from __future__ import annotations

import warnings

import dagster as dg

from microtrials.ingest import warehouse

# multi_observable_source_asset is marked beta in Dagster 1.13; it is the public way to observe
# several tables in one step.
warnings.filterwarnings("ignore", message=".*multi_observable_source_asset.*", category=dg.BetaWarning)

C = dg.TableColumn

DELIVERIES_COLUMNS = [
    C("delivery_id", "VARCHAR", description="sha256 of the delivered file's bytes (same bytes, same id)"),
    C("file_name", "VARCHAR", description="the file's name in the extracts folder"),
    C("school_urn", "VARCHAR", description="the school's 6-digit URN; blank when the file could not be read"),
    C("trials", "VARCHAR", description="the trials the file holds, 'intervention / outcome_measure' joined by '; '"),
    C("rows_read", "INTEGER", description="data lines read from the file (header not counted)"),
    C("rows_loaded", "INTEGER", description="rows loaded into `pupils`"),
    C("rows_quarantined", "INTEGER", description="rows set aside in `quarantine` (a required value broke a rule)"),
    C("columns_dropped", "VARCHAR", description="columns outside the contract, dropped unread (they may hold personal data)"),
    C("status", "VARCHAR", description="'loaded' or 'rejected' (an unchanged re-load adds no row)"),
    C("reason", "VARCHAR", description="why a file was rejected whole, in plain words"),
    C("loaded_at", "TIMESTAMP", description="when the file was seen (UTC)"),
    C("report_json", "VARCHAR", description="the file's load report as JSON (no pupil identifiers)"),
]

QUARANTINE_COLUMNS = [
    C("delivery_id", "VARCHAR", description="sha256 of the file the row came from"),
    C("source_file", "VARCHAR", description="the file's name"),
    C("line", "INTEGER", description="the line as a spreadsheet shows it (header = line 1)"),
    C("school_urn", "VARCHAR", description="the school's URN, when the row had a valid one"),
    C("column_name", "VARCHAR", description="the column whose value broke a rule"),
    C("reason", "VARCHAR", description="what is wrong, in plain words; never quotes a pupil_id"),
    C("quarantined_at", "TIMESTAMP", description="when the row was set aside (UTC)"),
    C("intervention", "VARCHAR", description="the trial the row named, so a re-delivery of the trial replaces it"),
    C("outcome_measure", "VARCHAR", description="the trial's outcome measure, as delivered"),
    C("rule", "VARCHAR", description="short name of the rule broken, as in the load report"),
    C("round", "VARCHAR", description="the round the row sent (blank: none)"),
    C("key_round", "VARCHAR", description="the round the row's trial key resolved to at load, as the pupil rows "
      "keep it (blank for a row naming no trial, or set aside before it was kept)"),
]

LOAD_REPORT_COLUMNS = [
    C("file_name", "VARCHAR", description="a file now in the extracts folder"),
    C("status", "VARCHAR", description="'loaded', 'unchanged' (same bytes seen before), 'held' or 'partly held' "
      "(a change that would lose more than half of a trial round's pupils or scores, or the very file of "
      "a school since withdrawn, waiting for `microtrials accept`), 'rejected' or 'ignored'"),
    C("school_urn", "VARCHAR", description="the school's URN; blank when the file could not be read"),
    C("trials", "VARCHAR", description="the trials the file holds, 'intervention / outcome_measure' joined by '; '"),
    C("rows_read", "BIGINT", description="data lines read"),
    C("rows_loaded", "BIGINT", description="rows loaded into `pupils`"),
    C("rows_quarantined", "BIGINT", description="rows kept out, set aside in `quarantine`"),
    C("outcomes_set_aside", "BIGINT", description="rows loaded whose outcome was set aside in `quarantine` "
      "(blanked, the pupil kept as randomised); with rows_quarantined, the rows in quarantine"),
    C("file_warnings", "VARCHAR", description="warnings about the whole file (e.g. read as Windows-1252), joined by '; '"),
    C("rows_with_warnings", "BIGINT", description="rows loaded with an optional value blanked or an outcome kept as no post-test (`load_warnings`)"),
    C("quarantined_by_reason", "VARCHAR", description="rows set aside per rule, 'rule: count' joined by '; '"),
    C("columns_dropped", "VARCHAR", description="columns outside the contract, dropped unread"),
    C("reason", "VARCHAR", description="why the file was rejected whole, or what of it is held, in plain words"),
    C("changes", "VARCHAR", description="what the file did to the warehouse, one line per school trial round "
      "(`change_sets`), e.g. '222005 Café Readers 2026 Autumn: 59 pupils replaced by 60 (1 added)'"),
]

CHANGE_SETS_COLUMNS = [
    C("delivery_id", "VARCHAR", description="sha256 of the delivered file; blank for a withdrawal"),
    C("file_name", "VARCHAR", description="the delivered file"),
    C("school_urn", "VARCHAR", description="the school's URN"),
    C("intervention", "VARCHAR", description="the registered name (else the spelling delivered)"),
    C("outcome_measure", "VARCHAR", description="the outcome measure as delivered"),
    C("round", "VARCHAR", description="the registered round (else the round sent, else blank)"),
    C("key_intervention", "VARCHAR", description="the trial key: intervention (microtrials.ingest.trial_key)"),
    C("key_outcome_measure", "VARCHAR", description="the trial key: outcome measure"),
    C("key_round", "VARCHAR", description="the trial key: round"),
    C("pupils_before", "INTEGER", description="the school's pupils in the trial round before"),
    C("pupils_after", "INTEGER", description="... and after the change (as delivered, for a held one)"),
    C("outcomes_before", "INTEGER", description="outcome scores before"),
    C("outcomes_after", "INTEGER", description="outcome scores after"),
    C("added", "INTEGER", description="pupils delivered who were not there before"),
    C("removed", "INTEGER", description="pupils there before whom the change leaves out"),
    C("scores_changed", "INTEGER", description="pupils kept whose outcome score differs (given, blanked or "
      "another value); blank for change sets recorded before it was counted"),
    C("arms_changed", "INTEGER", description="pupils kept whose arm differs (the randomisation as sent before "
      "is replaced); blank for change sets recorded before it was counted"),
    C("baselines_changed", "INTEGER", description="pupils kept whose baseline score differs (given, blanked or "
      "another value); blank for change sets recorded before it was counted"),
    C("details_changed", "INTEGER", description="pupils kept whose fsm, gender, year_group or send differs; "
      "blank for change sets recorded before it was counted"),
    C("state", "VARCHAR", description="'applied', 'held' (nothing of it applied), 'accepted' (applied by "
      "`microtrials accept`) or 'withdrawn' (`microtrials withdraw`)"),
    C("reason", "VARCHAR", description="why it was held"),
    C("message", "VARCHAR", description="the line the officer was shown"),
    C("run_id", "VARCHAR", description="the Dagster run whose load recorded it (blank for the accept and withdraw "
      "commands, and for change sets recorded before it was kept)"),
    C("recorded_at", "TIMESTAMP", description="when the change set was recorded (UTC)"),
]

LOAD_WARNINGS_COLUMNS = [
    C("delivery_id", "VARCHAR", description="sha256 of the file the row came from"),
    C("source_file", "VARCHAR", description="the file's name"),
    C("line", "INTEGER", description="the line as a spreadsheet shows it (header = line 1)"),
    C("school_urn", "VARCHAR", description="the school's URN"),
    C("column_name", "VARCHAR", description="the column whose value was not understood or odd"),
    C("rule", "VARCHAR", description="short name of the rule, as in the load report"),
    C("reason", "VARCHAR", description="what was odd and what was done (value blanked, outcome kept as no post-test); never quotes a pupil_id"),
    C("intervention", "VARCHAR", description="the trial the row named"),
    C("outcome_measure", "VARCHAR", description="the trial's outcome measure, as delivered"),
]

SCHOOL_RESULTS_COLUMNS = [
    C("intervention", "VARCHAR", description="the trial's intervention"),
    C("outcome_measure", "VARCHAR", description="the trial's outcome measure"),
    C("round", "VARCHAR", description="the trial row's registered round ('all rounds' for the cumulative row; blank without a registry)"),
    C("school_round", "VARCHAR", description="the round this school's pupils belong to (in the cumulative row a school of two rounds has a row per round)"),
    C("school_urn", "VARCHAR", description="the school's URN"),
    C("n_intervention", "BIGINT", description="analysed pupils of the school in the intervention arm"),
    C("n_control", "BIGINT", description="analysed pupils of the school in the control arm"),
    C("g", "DOUBLE", description="the school's own ANCOVA arm effect (outcome ~ arm [+ baseline]) divided by the "
      "trial's total SD: the same scale as the trial's effect_size"),
    C("ci_low", "DOUBLE", description="lower end of the 95% confidence interval of g"),
    C("ci_high", "DOUBLE", description="upper end of the 95% confidence interval of g"),
    C("eb_g", "DOUBLE", description="the school's shrunken effect from the headline (multisite) model: effect_size "
      "plus the school's arm-slope BLUP / total SD (effect_size itself when the headline is the random-intercept model)"),
    C("note", "VARCHAR", description="plain words, e.g. 'one arm only (23 pupils in intervention)'"),
]

def _stored_type(name: str) -> str:
    from microtrials.stats import trial_store

    if name in trial_store.TEXT_COLUMNS:
        return "VARCHAR"
    if name in trial_store.BOOL_COLUMNS:
        return "BOOLEAN"
    return "BIGINT" if name in trial_store.COUNT_COLUMNS else "DOUBLE"


def _exploratory_columns() -> list[dg.TableColumn]:
    from microtrials.stats import trial_store

    return [C(name, _stored_type(name), description=text) for name, text in trial_store.COLUMN_DESCRIPTIONS.items()]


EXPLORATORY_COLUMNS = _exploratory_columns()
REGISTRY_MESSAGE_COLUMNS = [
    C("level", "VARCHAR", description="'error' (rows kept but not used as evidence) or 'warning' (acted on: check it)"),
    C("rule", "VARCHAR", description="unregistered, round_needed, round_unknown, unplanned_school, exploratory or rounds_differ"),
    C("intervention", "VARCHAR", description="the registered name, or the spelling that is not in the registry"),
    C("school_urn", "VARCHAR", description="the school(s) concerned, comma-separated"),
    C("message", "VARCHAR", description="what happened and what to do, in plain words"),
]
REGISTRY_PROGRESS_COLUMNS = [
    C("intervention", "VARCHAR", description="the registered intervention"),
    C("round", "VARCHAR", description="the registered round"),
    C("start_date", "VARCHAR", description="the round's start date (ISO)"),
    C("end_date", "VARCHAR", description="the round's end date (ISO), blank when not set"),
    C("planned", "BIGINT", description="schools planned in the round"),
    C("delivered", "BIGINT", description="planned schools whose primary-outcome rows joined the round"),
    C("awaited", "BIGINT", description="planned schools neither delivered nor withdrawn"),
    C("awaited_urns", "VARCHAR", description="their URNs, space-separated"),
    C("unplanned_urns", "VARCHAR", description="schools not in the plan whose rows joined this round"),
    C("status", "VARCHAR", description="'interim' while schools are awaited; blank when every planned school delivered"),
    C("status_note", "VARCHAR", description="e.g. 'awaiting 3 of 12 schools'"),
    C("withdrawn", "BIGINT", description="planned schools not delivered, withdrawn (microtrials withdraw, change_sets): "
                                         "no longer awaited"),
    C("withdrawn_urns", "VARCHAR", description="their URNs, space-separated"),
]

TABLES = {
    "deliveries": (DELIVERIES_COLUMNS, "Every file ever seen, one row per file name and content (sha256), "
                   "loaded or rejected with the reason: the history of what each school sent."),
    "quarantine": (QUARANTINE_COLUMNS, "Each row kept out of `pupils`: file, line, column and the rule it broke "
                   "(never a pupil_id), to send back to the school."),
    "change_sets": (CHANGE_SETS_COLUMNS, "What each delivery did to each (school, trial, round), or was held from "
                    "doing, and each accept and withdrawal: never deleted (docs/loading.md)."),
    "load_report": (LOAD_REPORT_COLUMNS, "The latest outcome of every file now in the extracts folder; published as "
                    "load_report.csv."),
    "load_warnings": (LOAD_WARNINGS_COLUMNS, "Rows loaded with an optional value blanked or an outcome that is not a "
                      "number kept as no post-test: file, line, column, reason, so the school can fix its next file."),
    "school_results": (SCHOOL_RESULTS_COLUMNS, "Per trial and school: the school's own effect on the effect_size scale "
                       "and its empirical-Bayes estimate; published as each trial's schools.csv."),
    "exploratory_results": (EXPLORATORY_COLUMNS, "Exploratory outcomes (neither the registered primary nor a "
                            "registered secondary outcome) and interventions not in the registry, analysed as "
                            "`trial_results` is, for evaluators only: never in the evidence table."),
    "registry_messages": (REGISTRY_MESSAGE_COLUMNS, "What the officer should act on after matching deliveries to the "
                          "registry: interventions not in the registry, schools not in the plan, schools in several "
                          "rounds that sent no round, exploratory outcomes."),
    "registry_progress": (REGISTRY_PROGRESS_COLUMNS, "Per registered round: schools planned, delivered and awaited "
                          "(with their URNs), unplanned schools that joined it, and its status."),
}
WRITTEN_BY = {"deliveries": "pupils", "change_sets": "pupils", "quarantine": "pupils", "load_report": "pupils", "load_warnings": "pupils",
              "school_results": "trial_results", "exploratory_results": "trial_results",
              "registry_messages": "trial_results", "registry_progress": "trial_results"}


def table_spec(name: str) -> dg.AssetSpec:
    """The asset spec of warehouse table ``name``: its writer as upstream, its columns with descriptions."""
    columns, description = TABLES[name]
    return dg.AssetSpec(
        name,
        deps=[WRITTEN_BY[name]],
        description=f"Warehouse table `{name}` (written by `{WRITTEN_BY[name]}`). {description}",
        group_name="warehouse",
        kinds={"duckdb"},
        metadata={"dagster/column_schema": dg.TableSchema(columns=columns), "dagster/table_name": name},
    )


def _observe(context, names: list[str]):
    """One observation per table: its row count (0 before the table exists)."""
    with context.resources.warehouse_db.connect() as con:
        for name in names:
            rows = 0
            if warehouse.table_exists(con, name):
                rows = con.execute(warehouse.sql("table_row_count"), {"name": name}).fetchall()[0][0]
            yield dg.ObserveResult(
                asset_key=name,
                data_version=dg.DataVersion(str(rows)),
                metadata={"dagster/row_count": int(rows)},
            )


LOADING_TABLES = ["deliveries", "change_sets", "quarantine", "load_report", "load_warnings"]
RESULT_TABLES = ["school_results", "exploratory_results", "registry_messages", "registry_progress"]


@dg.multi_observable_source_asset(
    name="loading_tables",
    specs=[table_spec(name) for name in LOADING_TABLES],
    required_resource_keys={"warehouse_db"},
    description="Observes the loading tables' row counts after `pupils` has run.",
)
def loading_tables(context):
    yield from _observe(context, LOADING_TABLES)


@dg.multi_observable_source_asset(
    name="result_tables",
    specs=[table_spec(name) for name in RESULT_TABLES],
    required_resource_keys={"warehouse_db"},
    description="Observes `school_results`' row count after `trial_results` has run.",
)
def result_tables(context):
    yield from _observe(context, RESULT_TABLES)


ALL_TABLE_ASSETS = [loading_tables, result_tables]
