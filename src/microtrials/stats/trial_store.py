"""Refresh every trial from the warehouse, each inside its own boundary, as stored in `trial_results`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import date, datetime

import duckdb
import pandas as pd

from microtrials.ingest import change_sets, names
from microtrials.ingest import registry as reg
from microtrials.stats import trials
from microtrials.stats import units
from microtrials.ingest import warehouse
from microtrials.publish.evidence_table import COLUMNS, EXTRA_COLUMNS, SCHOOL_COLUMNS, evidence_row, school_table
from microtrials.stats.trials import INTERIM, NOT_REFRESHED, PUBLISHED, TrialResult, TrialSpellings
from microtrials.stats.units import Unit

# Bump when a change of method changes the stored figures (Dagster's code_version marks them stale).
CODE_VERSION = "trial-results-2026-12-multisite-headline"

# What each stored column of `trial_results` means (Dagster column descriptions; docs/methods.md).
COLUMN_DESCRIPTIONS: dict[str, str] = {
    "intervention": "The trial's intervention (most common delivered spelling; spellings differing only in case, spacing or Unicode form are one trial)",
    "outcome_measure": "The trial's outcome measure (most common delivered spelling)",
    "schools": "Schools with at least one analysed pupil",
    "schools_both_arms": "Schools with analysed pupils in both arms",
    "pupils_randomised": "Rows delivered for the trial",
    "pupils_analysed": "Pupils in the primary model: every pupil with an outcome (missing baselines by the missing-indicator method)",
    "attrition_pct": "100 x (randomised - analysed) / randomised: pupils without an outcome",
    "effect_size": "Hedges' g: arm coefficient of the primary (multisite) model / total SD of the unconditional model",
    "ci_low": "Lower end of the effect size's 95% confidence interval",
    "ci_high": "Upper end of the effect size's 95% confidence interval",
    "p_value": "Two-sided Wald p-value of the arm coefficient",
    "months_progress": "EEF Toolkit conversion of effect_size to months of additional progress",
    "tau": "SD of the effect across schools on the effect_size scale: the primary model's arm-slope SD / total SD (0 for a random-intercept headline)",
    "i2": "I-squared (%) on the primary model: 100 slope variance / (slope variance + typical sampling variance of a school's own effect, sigma2 (1/n1 + 1/n0))",
    "pi_low": "Lower end of the 95% prediction interval for a new school: effect_size -/+ t(k-1) sqrt(SE^2 + tau^2), k = schools with both arms; blank with fewer than 3",
    "pi_high": "Upper end of the 95% prediction interval for a new school",
    "status": "published, interim, not_estimable (reason first in notes) or not_refreshed (previous figures kept)",
    "p_new_school_benefits": "P(effect in a new school > 0) = F_t(effect_size / sqrt(SE^2 + tau^2); k-1)",
    "fsm_effect_size": "The primary model on FSM pupils only, over the headline total SD",
    "fsm_ci_low": "Lower end of the FSM effect's 95% CI",
    "fsm_ci_high": "Upper end of the FSM effect's 95% CI",
    "evidence_strength": "0 to 5 (EEF padlock rules with the project's deductions)",
    "notes": "Plain-English caveats separated by '; ' (a not_estimable or not_refreshed reason comes first)",
    "fsm_months_progress": "Months of progress for the FSM effect size",
    "ready": "The trial was estimated with at least 2 schools with both arms",
    "converged": "The stored figures come from converged primary and unconditional models (true when nothing was fitted or the previous figures were kept)",
    "model": "The primary model's formula",
    "model_choice": "Which model gave the headline: the multisite model, or the random-intercept model and why (slope variance 0, no convergence)",
    "beta": "Arm coefficient of the primary model (outcome units)",
    "se": "Its standard error",
    "var_school": "School variance of the primary model",
    "var_pupil": "Pupil variance of the primary model",
    "var_school_unconditional": "School variance of the unconditional model",
    "var_pupil_unconditional": "Pupil variance of the unconditional model",
    "g_within": "Arm coefficient / within-school SD of the unconditional model",
    "pupils_no_baseline": "Analysed pupils without a baseline score (missing-indicator method)",
    "slope_beta": "Arm coefficient of the random-slope (multisite) model, also when the headline fell back",
    "slope_se": "Its standard error",
    "slope_sd": "SD of the arm slope across schools in the random-slope model (outcome units)",
    "ri_beta": "Sensitivity: arm coefficient of the random-intercept model outcome ~ arm + baseline + (1 | school)",
    "ri_se": "Its standard error",
    "ri_effect_size": "Sensitivity: the random-intercept model's effect size (same total SD as effect_size)",
    "ri_ci_low": "Lower end of its 95% CI",
    "ri_ci_high": "Upper end of its 95% CI",
    "pooled_g": "Evaluators' check, never published: mean of the per-school ANCOVA effects, REML (t-based)",
    "pooled_se": "Its standard error",
    "pooled_ci_low": "Lower end of its 95% CI (t, k-1 df)",
    "pooled_ci_high": "Upper end of its 95% CI (t, k-1 df)",
    "schools_pooled": "Schools with their own ANCOVA estimate (at least 2 pupils per arm and 5 in all)",
    "pooled_tau": "Evaluators' check: tau of that two-stage pooling (overstated when schools are small)",
    "q": "Cochran's Q of the per-school effects",
    "q_p": "Its chi-squared p-value",
    "fsm_pupils": "FSM pupils analysed",
    "mdes": "Minimum detectable effect size (80% power, 5% two-sided)",
    "baseline_difference": "Baseline difference between arms (SD units, WWC Hedges' g)",
    "baseline_balance": "WWC baseline-equivalence category",
    "attrition_intervention": "Attrition (%) in the intervention arm",
    "attrition_control": "Attrition (%) in the control arm",
    "spellings": "The delivered spellings analysed as this trial, when more than one",
    "round": "The registered round the row analyses; 'all rounds' for the cumulative row (outcome ~ arm + baseline + round + (1 | school:round)); blank without a registry",
    "outcome_role": "primary (the round's registered outcome, the headline) or secondary (a registered secondary outcome); blank without a registry. Exploratory outcomes and unregistered interventions are in `exploratory_results`, never published",
    "toolkit_strand": "The EEF Teaching and Learning Toolkit strand, from the registry",
    "national_months": "The Toolkit's national impact in months for that strand, from the registry",
    "cost_per_pupil": "Pounds per pupil per year, from the registry",
    "cost_rating": "The Toolkit's cost band of cost_per_pupil: £ under £80, ££ to £200, £££ to £720, ££££ to £1,200, £££££ above",
    "description": "One plain sentence saying what the intervention is, from the registry",
    "round_order": "Sort position of the round (by start_date; the cumulative row last)",
}
STORED_COLUMNS = list(COLUMN_DESCRIPTIONS)
TEXT_COLUMNS = {"intervention", "outcome_measure", "status", "notes", "model", "model_choice", "baseline_balance", "spellings",
                "round", "outcome_role", "toolkit_strand", "cost_rating", "description"}
BOOL_COLUMNS = {"ready", "converged"}
COUNT_COLUMNS = {"schools", "schools_both_arms", "pupils_randomised", "pupils_analysed", "months_progress",
                 "evidence_strength", "fsm_months_progress", "pupils_no_baseline", "schools_pooled", "fsm_pupils",
                 "national_months", "round_order"}
SORT_COLUMNS = ["intervention", "outcome_measure", "round_order"]


def stored_row(result: TrialResult) -> dict[str, object]:
    """The evidence-table row plus the figures behind it, as stored in `trial_results`."""
    row = evidence_row(result)
    fit, slope, pool, ri = result.primary, result.random_slope, result.pool, result.random_intercept
    row.update(
        ready=result.ready,
        converged=result.converged,
        model=None if fit is None else fit.formula,
        beta=None if fit is None else fit.params["arm"],
        se=None if fit is None else fit.bse["arm"],
        var_school=None if fit is None else fit.var_school,
        var_pupil=None if fit is None else fit.var_pupil,
        var_school_unconditional=None if fit is None else result.unconditional.var_school,
        var_pupil_unconditional=None if fit is None else result.unconditional.var_pupil,
        g_within=None if result.within is None else result.within.g,
        pupils_no_baseline=result.pupils_no_baseline,
        slope_beta=None if slope is None else slope.params["arm"],
        slope_se=None if slope is None else slope.bse["arm"],
        slope_sd=None if slope is None else slope.sd_slope,
        model_choice=result.model_choice or None,
        ri_beta=None if ri is None else ri.params["arm"],
        ri_se=None if ri is None else ri.bse["arm"],
        ri_effect_size=None if result.sensitivity is None else result.sensitivity.g,
        ri_ci_low=None if result.sensitivity is None else result.sensitivity.ci_low,
        ri_ci_high=None if result.sensitivity is None else result.sensitivity.ci_high,
        pooled_g=None if pool is None else pool.mu,
        pooled_se=None if pool is None else pool.se,
        pooled_ci_low=None if pool is None else pool.ci_low,
        pooled_ci_high=None if pool is None else pool.ci_high,
        schools_pooled=0 if pool is None else pool.k,
        pooled_tau=None if pool is None else pool.tau,
        q=None if pool is None else pool.q,
        q_p=None if pool is None else pool.q_p,
        fsm_pupils=result.fsm_pupils,
        mdes=result.mdes,
        baseline_difference=None if result.balance is None else result.balance.difference,
        baseline_balance=None if result.balance is None else result.balance.flag,
        attrition_intervention=result.attrition.intervention,
        attrition_control=result.attrition.control,
        spellings=_spelling_text(result.spellings),
        round_order=result.extras.get("round_order"),
    )
    return {c: row.get(c) for c in STORED_COLUMNS}


def _spelling_text(rows: tuple[tuple[str, str, int], ...]) -> str | None:
    if len(rows) < 2:
        return None
    return "; ".join(f"{i} / {o} ({n} rows)" for i, o, n in rows)


@dataclass
class Refresh:
    """One refresh of every trial: the rows to store and what happened to each trial."""

    results: list[TrialResult] = field(default_factory=list)  # the trials analysed afresh (published and not)
    rows: list[dict[str, object]] = field(default_factory=list)  # trial_results, one per published row
    schools: list[pd.DataFrame] = field(default_factory=list)  # school_results parts
    failures: dict[str, str] = field(default_factory=dict)  # unit label -> reason
    spellings: list[TrialSpellings] = field(default_factory=list)
    exploratory: list[dict[str, object]] = field(default_factory=list)  # evaluators only: never published
    messages: pd.DataFrame = field(default_factory=lambda: reg.messages_frame(()))  # for the officer
    progress: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=reg.PROGRESS_COLUMNS))
    registry: bool = False  # a registry was used

    @staticmethod
    def _typed(rows: list[dict[str, object]]) -> pd.DataFrame:
        table = pd.DataFrame(rows, columns=STORED_COLUMNS)
        for column in STORED_COLUMNS:
            if column in TEXT_COLUMNS:
                table[column] = table[column].astype("string")
            elif column in BOOL_COLUMNS:
                table[column] = table[column].astype("boolean")
            elif column in COUNT_COLUMNS:
                table[column] = pd.to_numeric(table[column]).astype("Int64")
            else:
                table[column] = pd.to_numeric(table[column]).astype("float64")
        return table.sort_values(SORT_COLUMNS, kind="stable", na_position="first").reset_index(drop=True)

    @property
    def trial_table(self) -> pd.DataFrame:
        """The published rows with stable types (a column that is blank for every trial is still
        numeric), sorted by intervention, outcome_measure, then round by start_date ("all rounds" last)."""
        return self._typed(self.rows)

    @property
    def exploratory_table(self) -> pd.DataFrame:
        """Exploratory outcomes and unregistered interventions, analysed for evaluators (table
        `exploratory_results`, same columns); never in the evidence table."""
        return self._typed(self.exploratory)

    @property
    def school_table(self) -> pd.DataFrame:
        columns = ["intervention", "outcome_measure", "round", "school_round", *SCHOOL_COLUMNS]
        parts = [p.reindex(columns=columns) for p in self.schools if not p.empty]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)

    @property
    def spelling_table(self) -> pd.DataFrame:
        """One row per delivered spelling: the trial it was analysed as (table `trial_spellings`)."""
        rows = [
            {"intervention": t.intervention, "outcome_measure": t.outcome_measure,
             "delivered_intervention": i, "delivered_outcome_measure": o, "rows": n, "merged": t.merged}
            for t in self.spellings for i, o, n in t.rows
        ]
        return pd.DataFrame(rows, columns=["intervention", "outcome_measure", "delivered_intervention",
                                           "delivered_outcome_measure", "rows", "merged"])


def _key(intervention: object, outcome_measure: object, round_name: object = None) -> tuple[str, str, str]:
    blank = round_name is None or round_name is pd.NA or (isinstance(round_name, float) and math.isnan(round_name))
    return (names.match_key(str(intervention)), names.match_key(str(outcome_measure)),
            "" if blank else names.match_key(str(round_name)))


def _previous(con: duckdb.DuckDBPyConnection, table: str) -> pd.DataFrame | None:
    return con.execute(warehouse.sql(table)).df() if warehouse.table_exists(con, table) else None


def unit_cells(con: duckdb.DuckDBPyConnection, unit: Unit) -> pd.DataFrame:
    """The unit's cell sums (sql/matched_cells.sql per round, bound keys), with a ``round`` column."""
    parts = [con.execute(warehouse.sql("matched_cells"), {"keys": list(keys)}).df().assign(round=name)
             for name, keys in unit.parts]
    return pd.concat(parts, ignore_index=True)


def _spelling_group(unit: Unit) -> TrialSpellings:
    return TrialSpellings(unit.intervention, unit.outcome_measure,
                          tuple(sorted({i for i, _, _ in unit.spellings})),
                          tuple(sorted({o for _, o, _ in unit.spellings})), unit.spellings)


def analyse_one(con: duckdb.DuckDBPyConnection, unit: Unit) -> TrialResult:
    """One unit from its cell sums in DuckDB: a round (or a trial without a registry) on its own,
    or the cumulative model over every round (:func:`trials.analyse_cells` with ``rounds``)."""
    cells = unit_cells(con, unit)
    result = trials.analyse_cells(cells, unit.intervention, unit.outcome_measure,
                                  rounds=unit.rounds if unit.cumulative else None)
    notes = result.notes
    trial = _spelling_group(unit)
    if unit.outcome_role is None and trial.merged:
        parts = [", ".join(f"'{x}'" for x in spellings) for spellings in (trial.interventions, trial.outcome_measures)
                 if len(spellings) > 1]
        if parts:
            notes = (*notes, "spellings merged as one trial: " + "; ".join(parts))
    elif len(trial.interventions) > 1 or any(i != unit.intervention for i in trial.interventions):
        others = [i for i in trial.interventions if i != unit.intervention]
        if others:
            notes = (*notes, "also sent as " + ", ".join(f"'{x}'" for x in others) + " (registered names and aliases)")
    return replace(result, notes=notes, spellings=trial.rows, round=unit.round, outcome_role=unit.outcome_role)


def _plan_status(unit: Unit, progress: pd.DataFrame) -> tuple[str | None, list[str]]:
    """(interim or None, notes) from the rounds' deliveries against the plan (registry.round_status)."""
    if progress.empty or unit.round is None:
        return None, []
    rows = progress[(progress["intervention"] == unit.intervention) & progress["round"].isin(unit.rounds)]
    rows = rows[rows["status"] == INTERIM]
    if rows.empty:
        return None, []
    if unit.cumulative:
        return INTERIM, [f"round {r}: {note}" for r, note in zip(rows["round"], rows["status_note"])]
    return INTERIM, list(rows["status_note"])


def _registry_extras(registry: reg.Registry | None, unit: Unit) -> dict[str, object]:
    columns = reg.evidence_columns(registry, unit.intervention, unit.round) if unit.outcome_role != units.UNREGISTERED \
        else reg.evidence_columns(None, unit.intervention, unit.round)
    columns["round_order"] = None if unit.round is None else unit.order
    return columns


def plan(con: duckdb.DuckDBPyConnection, registry: reg.Registry | None, today: date | None = None,
         versions: list[tuple[datetime, reg.Registry]] | None = None) -> tuple[list[Unit], Refresh, dict]:
    """The units to analyse, an empty Refresh holding the officer's messages and the plan's
    progress, and the outcome-switching notes by (match_key(intervention), match_key(round))."""
    combos = con.execute(warehouse.sql("delivered_combos")).df()
    out = Refresh(registry=registry is not None)
    if registry is None:
        return units.units_without_registry(combos), out, {}
    today = today or date.today()
    matching = reg.match_deliveries(registry, combos, today)
    out.messages = reg.messages_frame((*matching.messages, *reg.registry_notes(registry)))
    out.progress = reg.plan_progress(registry, matching.combos, today, change_sets.withdrawn_from_plan(con, registry.rounds))
    switches = reg.outcome_switch_notes(versions or [], reg.first_results(matching.combos))
    return units.units_from_matching(registry, matching.combos), out, switches


def refresh(con: duckdb.DuckDBPyConnection, registry: reg.Registry | None = None, *, today: date | None = None,
            versions: list[tuple[datetime, reg.Registry]] | None = None) -> Refresh:
    """Analyse every unit (a trial round, the cumulative row, or a trial without a registry)
    inside its own boundary.

    Published rows (registered primary and secondary outcomes; every trial without a registry)
    go to ``rows``; exploratory outcomes and unregistered interventions to ``exploratory``. A
    round still awaiting planned schools is ``interim`` with "awaiting 3 of 12 schools"; a primary
    outcome changed after results arrived gets a note. A trial that cannot be estimated is a
    ``not_estimable`` row. A numerical failure keeps that unit's previous row and school rows with
    status ``not_refreshed`` and the reason first in notes (blank figures when there is none).
    """
    todo, out, switches = plan(con, registry, today, versions)
    previous_trials = _previous(con, "trial_results")
    previous_schools = _previous(con, "school_results")
    for unit in todo:
        out.spellings.append(_spelling_group(unit))
        try:
            result = analyse_one(con, unit)
        except Exception as exc:  # the boundary: one trial's failure is data, not an escape
            reason = f"not refreshed: the model failed this run ({type(exc).__name__}: {exc}); figures from the previous run"
            out.failures[unit.label] = reason
            if unit.published:
                row, schools = _kept(unit, reason, previous_trials, previous_schools)
                row.update({k: v for k, v in _registry_extras(registry, unit).items() if k in row})
                out.rows.append(row)
                out.schools.append(schools)
            continue
        status, plan_notes = _plan_status(unit, out.progress)
        switch = [switches[k] for k in _switch_keys(unit) if k in switches] if unit.outcome_role == reg.PRIMARY else []
        notes = result.notes
        if status == INTERIM and result.status == PUBLISHED:
            result = replace(result, status=INTERIM)
            notes = (*plan_notes, *notes)
        elif plan_notes:
            notes = (*notes, *plan_notes)
        result = replace(result, notes=(*notes, *switch), extras=_registry_extras(registry, unit))
        out.results.append(result)
        if unit.published:
            out.rows.append(stored_row(result))
            out.schools.append(school_table(result))
        else:
            out.exploratory.append(stored_row(result))
    return out


def _switch_keys(unit: Unit) -> list[tuple[str, str]]:
    return [(names.match_key(unit.intervention), names.match_key(r)) for r in unit.rounds]


def _kept(
    unit: Unit, reason: str, previous_trials: pd.DataFrame | None, previous_schools: pd.DataFrame | None
) -> tuple[dict[str, object], pd.DataFrame]:
    """The previous row of a unit whose refresh failed, marked not_refreshed, and its school rows."""
    key = _key(unit.intervention, unit.outcome_measure, unit.round)

    def matches(frame: pd.DataFrame) -> list[bool]:
        rounds = frame["round"] if "round" in frame else [None] * len(frame)
        return [_key(i, o, r) == key for i, o, r in zip(frame["intervention"], frame["outcome_measure"], rounds)]

    row: dict[str, object] = {c: None for c in STORED_COLUMNS}
    schools = pd.DataFrame()
    if previous_trials is not None and len(previous_trials):
        match = previous_trials[matches(previous_trials)]
        if len(match):
            row.update({c: _plain(v) for c, v in match.iloc[0].items() if c in row})
    if row.get("intervention") is None:
        reason = reason.replace("; figures from the previous run", "; no previous figures to keep")
    old_notes = row.get("notes")
    # `converged` says whether the stored figures come from converged fits: the kept ones did, and
    # a blank row publishes none; the failure itself is in `status` and `notes`.
    row.update(intervention=unit.intervention, outcome_measure=unit.outcome_measure, round=unit.round,
               outcome_role=unit.outcome_role, status=NOT_REFRESHED,
               notes=reason + (f"; {old_notes}" if old_notes else ""), converged=row.get("converged") is not False)
    if previous_schools is not None and len(previous_schools):
        schools = previous_schools[matches(previous_schools)].assign(
            intervention=unit.intervention, outcome_measure=unit.outcome_measure, round=unit.round)
    return row, schools


def _plain(value: object) -> object:
    """A stored value back as plain Python (NaN and NA as None)."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value


def store(con: duckdb.DuckDBPyConnection, run: Refresh) -> None:
    """Replace `trial_results`, `exploratory_results`, `school_results`, `trial_spellings`,
    `registry_messages` and `registry_progress` with this refresh."""
    warehouse.save_frame(con, "trial_results", run.trial_table)
    warehouse.save_frame(con, "exploratory_results", run.exploratory_table)
    warehouse.save_frame(con, "school_results", run.school_table)
    warehouse.save_frame(con, "trial_spellings", run.spelling_table)
    warehouse.save_frame(con, "registry_messages", run.messages.astype("string"))
    counts = ["planned", "delivered", "awaited", "withdrawn"]
    progress = run.progress.astype({c: "string" for c in reg.PROGRESS_COLUMNS if c not in counts})
    progress = progress.astype({c: "Int64" for c in counts})
    warehouse.save_frame(con, "registry_progress", progress)


__all__ = ["CODE_VERSION", "COLUMN_DESCRIPTIONS", "Refresh", "refresh", "store", "stored_row",
           "COLUMNS", "EXTRA_COLUMNS"]
