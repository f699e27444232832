"""Refresh every trial from the warehouse, each inside its own boundary, as stored in `trial_results`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import duckdb
import pandas as pd

from microtrials import names, reml, trials, warehouse
from microtrials.evidence_table import COLUMNS, EXTRA_COLUMNS, SCHOOL_COLUMNS, evidence_row, school_table
from microtrials.trials import NOT_REFRESHED, TrialResult, TrialSpellings

# Bump when a change of method changes the stored figures (Dagster's code_version marks them stale).
CODE_VERSION = "trial-results-2026-11-heterogeneity-t"

# What each stored column of `trial_results` means (Dagster column descriptions; docs/methods.md).
COLUMN_DESCRIPTIONS: dict[str, str] = {
    "intervention": "The trial's intervention (most common delivered spelling; spellings differing only in case, spacing or Unicode form are one trial)",
    "outcome_measure": "The trial's outcome measure (most common delivered spelling)",
    "schools": "Schools with at least one analysed pupil",
    "schools_both_arms": "Schools with analysed pupils in both arms",
    "pupils_randomised": "Rows delivered for the trial",
    "pupils_analysed": "Pupils in the primary model: every pupil with an outcome (missing baselines by the missing-indicator method)",
    "attrition_pct": "100 x (randomised - analysed) / randomised: pupils without an outcome",
    "effect_size": "Hedges' g: arm coefficient of the primary model / total SD of the unconditional model",
    "ci_low": "Lower end of the effect size's 95% confidence interval",
    "ci_high": "Upper end of the effect size's 95% confidence interval",
    "p_value": "Two-sided Wald p-value of the arm coefficient",
    "months_progress": "EEF Toolkit conversion of effect_size to months of additional progress",
    "tau": "SD of the effect across schools on the effect_size scale (per-school ANCOVA / total SD, REML)",
    "i2": "I-squared (%) of that pooling: share of variation across schools not due to chance",
    "pi_low": "Lower end of the 95% prediction interval for a new school (t, k-1 df); blank with fewer than 3 schools",
    "pi_high": "Upper end of the 95% prediction interval for a new school",
    "status": "published, interim, not_estimable (reason first in notes) or not_refreshed (previous figures kept)",
    "p_new_school_benefits": "P(effect in a new school > 0) from the pooling's predictive t distribution",
    "fsm_effect_size": "The primary model on FSM pupils only, over the headline total SD",
    "fsm_ci_low": "Lower end of the FSM effect's 95% CI",
    "fsm_ci_high": "Upper end of the FSM effect's 95% CI",
    "evidence_strength": "0 to 5 (EEF padlock rules with the project's deductions)",
    "notes": "Plain-English caveats separated by '; ' (a not_estimable or not_refreshed reason comes first)",
    "fsm_months_progress": "Months of progress for the FSM effect size",
    "ready": "The trial was estimated with at least 2 schools with both arms",
    "converged": "The stored figures come from converged primary and unconditional models (true when nothing was fitted or the previous figures were kept)",
    "model": "The primary model's formula",
    "beta": "Arm coefficient of the primary model (outcome units)",
    "se": "Its standard error",
    "var_school": "School variance of the primary model",
    "var_pupil": "Pupil variance of the primary model",
    "var_school_unconditional": "School variance of the unconditional model",
    "var_pupil_unconditional": "Pupil variance of the unconditional model",
    "g_within": "Arm coefficient / within-school SD of the unconditional model",
    "pupils_no_baseline": "Analysed pupils without a baseline score (missing-indicator method)",
    "slope_beta": "Arm coefficient of the random-slope model (evaluators' cross-check)",
    "slope_se": "Its standard error",
    "slope_sd": "SD of the arm slope across schools in the random-slope model (outcome units)",
    "pooled_g": "Mean of the per-school ANCOVA effects, REML (t-based)",
    "pooled_se": "Its standard error",
    "pooled_ci_low": "Lower end of its 95% CI (t, k-1 df)",
    "pooled_ci_high": "Upper end of its 95% CI (t, k-1 df)",
    "schools_pooled": "Schools with their own ANCOVA estimate (at least 2 pupils per arm and 5 in all)",
    "tau2": "tau squared",
    "q": "Cochran's Q of the per-school effects",
    "q_p": "Its chi-squared p-value",
    "fsm_pupils": "FSM pupils analysed",
    "mdes": "Minimum detectable effect size (80% power, 5% two-sided)",
    "baseline_difference": "Baseline difference between arms (SD units, WWC Hedges' g)",
    "baseline_balance": "WWC baseline-equivalence category",
    "attrition_intervention": "Attrition (%) in the intervention arm",
    "attrition_control": "Attrition (%) in the control arm",
    "spellings": "The delivered spellings analysed as this trial, when more than one",
}
STORED_COLUMNS = list(COLUMN_DESCRIPTIONS)
TEXT_COLUMNS = {"intervention", "outcome_measure", "status", "notes", "model", "baseline_balance", "spellings"}
BOOL_COLUMNS = {"ready", "converged"}
COUNT_COLUMNS = {"schools", "schools_both_arms", "pupils_randomised", "pupils_analysed", "months_progress",
                 "evidence_strength", "fsm_months_progress", "pupils_no_baseline", "schools_pooled", "fsm_pupils"}


def stored_row(result: TrialResult) -> dict[str, object]:
    """The evidence-table row plus the figures behind it, as stored in `trial_results`."""
    row = evidence_row(result)
    fit, slope, pool = result.primary, result.random_slope, result.pool
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
        pooled_g=None if pool is None else pool.mu,
        pooled_se=None if pool is None else pool.se,
        pooled_ci_low=None if pool is None else pool.ci_low,
        pooled_ci_high=None if pool is None else pool.ci_high,
        schools_pooled=0 if pool is None else pool.k,
        tau2=None if pool is None else pool.tau2,
        q=None if pool is None else pool.q,
        q_p=None if pool is None else pool.q_p,
        fsm_pupils=result.fsm_pupils,
        mdes=result.mdes,
        baseline_difference=None if result.balance is None else result.balance.difference,
        baseline_balance=None if result.balance is None else result.balance.flag,
        attrition_intervention=result.attrition.intervention,
        attrition_control=result.attrition.control,
        spellings=_spelling_text(result.spellings),
    )
    return {c: row.get(c) for c in STORED_COLUMNS}


def _spelling_text(rows: tuple[tuple[str, str, int], ...]) -> str | None:
    if len(rows) < 2:
        return None
    return "; ".join(f"{i} / {o} ({n} rows)" for i, o, n in rows)


@dataclass
class Refresh:
    """One refresh of every trial: the rows to store and what happened to each trial."""

    results: list[TrialResult] = field(default_factory=list)  # the trials analysed afresh
    rows: list[dict[str, object]] = field(default_factory=list)  # trial_results, one per trial
    schools: list[pd.DataFrame] = field(default_factory=list)  # school_results parts
    failures: dict[str, str] = field(default_factory=dict)  # "intervention / outcome" -> reason
    spellings: list[TrialSpellings] = field(default_factory=list)

    @property
    def trial_table(self) -> pd.DataFrame:
        """The rows with stable types (a column that is blank for every trial is still numeric)."""
        table = pd.DataFrame(self.rows, columns=STORED_COLUMNS)
        for column in STORED_COLUMNS:
            if column in TEXT_COLUMNS:
                table[column] = table[column].astype("string")
            elif column in BOOL_COLUMNS:
                table[column] = table[column].astype("boolean")
            elif column in COUNT_COLUMNS:
                table[column] = pd.to_numeric(table[column]).astype("Int64")
            else:
                table[column] = pd.to_numeric(table[column]).astype("float64")
        return table.sort_values(["intervention", "outcome_measure"], kind="stable").reset_index(drop=True)

    @property
    def school_table(self) -> pd.DataFrame:
        columns = ["intervention", "outcome_measure", *SCHOOL_COLUMNS]
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


def _key(intervention: object, outcome_measure: object) -> tuple[str, str]:
    return names.match_key(str(intervention)), names.match_key(str(outcome_measure))


def _previous(con: duckdb.DuckDBPyConnection, table: str) -> pd.DataFrame | None:
    return con.execute(warehouse.sql(table)).df() if warehouse.table_exists(con, table) else None


def analyse_one(con: duckdb.DuckDBPyConnection, trial: TrialSpellings) -> TrialResult:
    """One trial from its cell sums in DuckDB (sql/school_stats.sql over every spelling)."""
    cells = reml.trial_cells(con, list(trial.interventions), list(trial.outcome_measures))
    result = trials.analyse_cells(cells, trial.intervention, trial.outcome_measure)
    notes = result.notes
    if trial.merged:
        parts = [", ".join(f"'{x}'" for x in spellings) for spellings in (trial.interventions, trial.outcome_measures)
                 if len(spellings) > 1]
        notes = (*notes, "spellings merged as one trial: " + "; ".join(parts))
    return _replace(result, notes=notes, spellings=trial.rows)


def _replace(result: TrialResult, **changes) -> TrialResult:
    from dataclasses import replace

    return replace(result, **changes)


def refresh(con: duckdb.DuckDBPyConnection) -> Refresh:
    """Analyse every trial inside its own boundary.

    A trial that cannot be estimated is a ``not_estimable`` row (no failure). A numerical failure
    (an exception, or a primary/unconditional model that did not converge) keeps that trial's
    previous `trial_results` row and `school_results` rows with status ``not_refreshed`` and the
    reason first in notes (blank figures when there is no previous row); other trials are stored.
    """
    out = Refresh(spellings=trials.group_spellings(con.execute(warehouse.sql("trial_spellings")).df()))
    previous_trials = _previous(con, "trial_results")
    previous_schools = _previous(con, "school_results")
    for trial in out.spellings:
        label = f"{trial.intervention} / {trial.outcome_measure}"
        try:
            result = analyse_one(con, trial)
        except Exception as exc:  # the boundary: one trial's failure is data, not an escape
            reason = f"not refreshed: the model failed this run ({type(exc).__name__}: {exc}); figures from the previous run"
            out.failures[label] = reason
            row, schools = _kept(trial, reason, previous_trials, previous_schools)
            out.rows.append(row)
            out.schools.append(schools)
            continue
        out.results.append(result)
        out.rows.append(stored_row(result))
        out.schools.append(school_table(result))
    return out


def _kept(
    trial: TrialSpellings, reason: str, previous_trials: pd.DataFrame | None, previous_schools: pd.DataFrame | None
) -> tuple[dict[str, object], pd.DataFrame]:
    """The previous row of a trial whose refresh failed, marked not_refreshed, and its school rows."""
    key = (names.match_key(trial.intervention), names.match_key(trial.outcome_measure))
    row: dict[str, object] = {c: None for c in STORED_COLUMNS}
    schools = pd.DataFrame()
    if previous_trials is not None and len(previous_trials):
        match = previous_trials[[_key(i, o) == key for i, o in zip(previous_trials["intervention"],
                                                                   previous_trials["outcome_measure"])]]
        if len(match):
            row.update({c: _plain(v) for c, v in match.iloc[0].items() if c in row})
    if row.get("intervention") is None:
        reason = reason.replace("; figures from the previous run", "; no previous figures to keep")
    old_notes = row.get("notes")
    # `converged` says whether the stored figures come from converged fits: the kept ones did, and
    # a blank row publishes none; the failure itself is in `status` and `notes`.
    row.update(intervention=trial.intervention, outcome_measure=trial.outcome_measure, status=NOT_REFRESHED,
               notes=reason + (f"; {old_notes}" if old_notes else ""), converged=row.get("converged") is not False)
    if previous_schools is not None and len(previous_schools):
        keep = [_key(i, o) == key for i, o in zip(previous_schools["intervention"], previous_schools["outcome_measure"])]
        schools = previous_schools[keep].assign(intervention=trial.intervention, outcome_measure=trial.outcome_measure)
    return row, schools


def _plain(value: object) -> object:
    """A stored value back as plain Python (NaN and NA as None)."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value


def store(con: duckdb.DuckDBPyConnection, run: Refresh) -> None:
    """Replace `trial_results`, `school_results` and `trial_spellings` with this refresh."""
    warehouse.save_frame(con, "trial_results", run.trial_table)
    warehouse.save_frame(con, "school_results", run.school_table)
    warehouse.save_frame(con, "trial_spellings", run.spelling_table)


__all__ = ["CODE_VERSION", "COLUMN_DESCRIPTIONS", "Refresh", "refresh", "store", "stored_row",
           "COLUMNS", "EXTRA_COLUMNS"]
