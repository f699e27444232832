"""Trial results: models, effect sizes, pooling and evidence strength for every trial, stored in the warehouse."""

import base64

import dagster as dg
import pandas as pd

from microtrials import plots, warehouse
from microtrials.evidence_table import evidence_row, school_table
from microtrials.trials import TrialResult, analyse_trial, analysed_pupils, warehouse_fitter
from pipelines.resources import Warehouse


@dg.asset(
    group_name="statistics",
    kinds={"duckdb", "python"},
    pool="warehouse",
    deps=["pupils"],
    description="Per trial (intervention x outcome_measure): the primary model "
    "outcome ~ arm [+ baseline] + (1 | school) by exact REML from per-school sufficient "
    "statistics computed in DuckDB, the random-slope, unconditional and FSM models, two-stage "
    "pooling and evidence strength (microtrials.trials.analyse_trial). Rows of `trial_results` "
    "are microtrials.evidence_table.evidence_row plus the model figures; `school_results` holds "
    "each school's own effect.",
)
def trial_results(context: dg.AssetExecutionContext, warehouse_db: Warehouse) -> dg.MaterializeResult:
    with warehouse_db.connect() as con:
        rows = con.execute(warehouse.sql("trial_pupils")).df()
        results = []
        for (intervention, outcome_measure), pupils in rows.groupby(["intervention", "outcome_measure"]):
            _, uses_baseline = analysed_pupils(pupils)
            fitter = warehouse_fitter(con, intervention, outcome_measure, uses_baseline)
            results.append(analyse_trial(pupils, fitter))
        table = pd.DataFrame([stored_row(r) for r in results])
        schools = pd.concat([school_table(r) for r in results], ignore_index=True)
        warehouse.save_frame(con, "trial_results", table)
        warehouse.save_frame(con, "school_results", schools)
    for r in results:
        context.log.info(f"{r.intervention} / {r.outcome_measure}: {evidence_row(r)['notes']}")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(table),
            "dagster/column_schema": dg.TableSchema(
                columns=[dg.TableColumn(name, str(dtype)) for name, dtype in table.dtypes.items()]
            ),
            "trials": dg.MetadataValue.md(_trials_markdown(table)),
            **{f"{r.intervention} / {r.outcome_measure}": dg.MetadataValue.md(trial_markdown(r)) for r in results},
        }
    )


def stored_row(result: TrialResult) -> dict[str, object]:
    """The evidence-table row plus the figures behind it, as stored in `trial_results`."""
    row = evidence_row(result)
    fit, slope, pool = result.primary, result.random_slope, result.pool
    row.update(
        ready=result.ready,
        converged=bool(fit is None or (fit.converged and result.unconditional.converged)),
        model=None if fit is None else fit.formula,
        beta=None if fit is None else fit.params["arm"],
        se=None if fit is None else fit.bse["arm"],
        var_school=None if fit is None else fit.var_school,
        var_pupil=None if fit is None else fit.var_pupil,
        var_school_unconditional=None if fit is None else result.unconditional.var_school,
        var_pupil_unconditional=None if fit is None else result.unconditional.var_pupil,
        g_within=None if result.within is None else result.within.g,
        slope_beta=None if slope is None else slope.params["arm"],
        slope_se=None if slope is None else slope.bse["arm"],
        slope_sd=None if slope is None else slope.sd_slope,
        pooled_g=None if pool is None else pool.mu,
        pooled_se=None if pool is None else pool.se,
        tau2=None if pool is None else pool.tau2,
        q=None if pool is None else pool.q,
        q_p=None if pool is None else pool.q_p,
        knha_ci_low=None if pool is None else pool.knha_ci_low,
        knha_ci_high=None if pool is None else pool.knha_ci_high,
        fsm_pupils=result.fsm_pupils,
        mdes=result.mdes,
        baseline_difference=None if result.balance is None else result.balance.difference,
        baseline_balance=None if result.balance is None else result.balance.flag,
        attrition_intervention=result.attrition.intervention,
        attrition_control=result.attrition.control,
    )
    return row


def _trials_markdown(table: pd.DataFrame) -> str:
    columns = ["intervention", "outcome_measure", "schools", "pupils_analysed", "effect_size",
               "ci_low", "ci_high", "tau", "evidence_strength", "ready"]
    return table[columns].to_markdown(index=False)


def trial_markdown(result: TrialResult) -> str:
    """What an evaluator wants for one trial: models, variance components, effects, schools, plot."""
    if result.primary is None:
        return "Not estimable: " + "; ".join(result.notes)
    parts = []
    for label, fit in (("Primary", result.primary), ("Unconditional", result.unconditional),
                       ("Random slope", result.random_slope), ("Arm x FSM", result.interaction),
                       ("FSM pupils only", result.fsm_model)):
        if fit is None:
            parts.append(f"**{label}**: not fitted")
            continue
        components = f"school {fit.var_school:.3f}, pupil {fit.var_pupil:.3f}, ICC {fit.icc:.3f}"
        if fit.var_slope is not None:
            components += f", arm slope {fit.var_slope:.3f} (SD {fit.sd_slope:.3f})"
        coefficients = pd.DataFrame({"estimate": pd.Series(fit.params), "SE": pd.Series(fit.bse)}).rename_axis("term")
        parts += [
            f"**{label}**: `{fit.formula}` ({fit.method}; n = {fit.n_obs}, schools = {fit.n_groups}; "
            f"converged: {fit.converged}; singular: {fit.singular})",
            f"Variance components: {components}",
            coefficients.round(4).to_markdown(),
        ]
    effects = pd.DataFrame(
        [(name, e.g, e.ci_low, e.ci_high) for name, e in
         (("g (total SD)", result.headline), ("g (within-school SD)", result.within), ("g, FSM pupils", result.fsm))
         if e is not None],
        columns=["effect size", "g", "ci_low", "ci_high"],
    )
    parts += ["**Effect sizes**", effects.round(4).to_markdown(index=False)]
    if result.pool is not None:
        p = result.pool
        parts.append(
            f"**Two-stage pooling** (REML, k = {p.k}): g = {p.mu:.4f} (SE {p.se:.4f}; 95% CI {p.ci_low:.4f} to "
            f"{p.ci_high:.4f}; Knapp-Hartung {p.knha_ci_low:.4f} to {p.knha_ci_high:.4f}); tau2 = {p.tau2:.4f}, "
            f"I2 = {p.i2:.1f}%, Q = {p.q:.2f} (p = {p.q_p:.4f}); prediction interval {p.pi_low:.4f} to {p.pi_high:.4f}"
        )
    parts += ["**Per-school effects**", result.per_school.round(4).to_markdown(index=False)]
    plot = _forest_png(result)
    if plot is not None:
        parts.append(f"![forest plot](data:image/png;base64,{base64.b64encode(plot).decode()})")
    a = result.attrition
    parts.append(f"**Attrition**: {a.overall:.1f}% overall, {a.intervention:.1f}% intervention, {a.control:.1f}% control")
    if result.balance is not None:
        parts.append(f"**Baseline balance**: {result.balance.difference:.3f} SD between arms among analysed pupils "
                     f"(WWC: {result.balance.flag}); MDES {result.mdes:.3f}")
    if result.strength is not None:
        parts.append(f"**Evidence strength {result.strength.score}/5**: " + "; ".join(result.strength.reasons))
    return "\n\n".join(parts)


def _forest_png(result: TrialResult) -> bytes | None:
    """The forest plot (per-school g and the pooled diamond) as PNG bytes."""
    per_school = result.per_school.dropna(subset=["g"])
    if result.pool is None or per_school.empty:
        return None
    p = result.pool
    return plots.forest_plot_png(per_school, (p.mu, p.ci_low, p.ci_high),
                                 f"{result.intervention} / {result.outcome_measure}", (p.pi_low, p.pi_high))
