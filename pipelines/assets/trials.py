"""Trial results: the multilevel models and effect sizes for every trial, stored in the warehouse."""

import dagster as dg
import pandas as pd

from microtrials import warehouse
from microtrials.evidence_table import evidence_row
from microtrials.trials import TrialResult, analyse_trial
from pipelines.resources import Warehouse


@dg.asset(
    group_name="statistics",
    kinds={"duckdb", "python"},
    pool="warehouse",
    deps=["pupils"],
    description="Per trial (intervention x outcome_measure): the primary model "
    "outcome ~ arm [+ baseline] + (1 | school) by REML, the unconditional model, and the "
    "evidence-table row they give (microtrials.trials.analyse_trial -> evidence_table.evidence_row).",
)
def trial_results(context: dg.AssetExecutionContext, warehouse_db: Warehouse) -> dg.MaterializeResult:
    with warehouse_db.connect() as con:
        rows = con.execute(warehouse.sql("trial_pupils")).df()
        results = [analyse_trial(group) for _, group in rows.groupby(["intervention", "outcome_measure"])]
        table = pd.DataFrame([_stored_row(r) for r in results])
        warehouse.save_frame(con, "trial_results", table)
    for r in results:
        context.log.info(f"{r.intervention} / {r.outcome_measure}: g = {r.effect_size:.3f}")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(table),
            "trials": dg.MetadataValue.md(_trials_markdown(results)),
            **{f"{r.intervention} / {r.outcome_measure}": dg.MetadataValue.md(_trial_markdown(r)) for r in results},
        }
    )


def _stored_row(result: TrialResult) -> dict[str, object]:
    """The evidence-table row plus the model figures behind it, as stored in `trial_results`."""
    fit = result.primary
    return {
        **evidence_row(result),
        "beta": fit.params["arm"],
        "se": fit.bse["arm"],
        "var_school": fit.var_school,
        "var_pupil": fit.var_pupil,
        "var_school_unconditional": result.unconditional.var_school,
        "var_pupil_unconditional": result.unconditional.var_pupil,
        "loglik_reml": fit.loglik_reml,
        "converged": fit.converged and result.unconditional.converged,
        "model": fit.formula,
    }


def _trials_markdown(results: list[TrialResult]) -> str:
    frame = pd.DataFrame(
        [
            {
                "trial": f"{r.intervention} / {r.outcome_measure}",
                "schools": r.schools,
                "pupils": r.pupils_analysed,
                "g": round(r.effect_size, 3),
                "95% CI": f"{r.ci_low:.3f} to {r.ci_high:.3f}",
            }
            for r in results
        ]
    )
    return frame.to_markdown(index=False)


def _trial_markdown(result: TrialResult) -> str:
    fit = result.primary
    coefficients = pd.DataFrame(
        {"estimate": pd.Series(fit.params), "SE": pd.Series(fit.bse)}
    ).rename_axis("term")
    return "\n\n".join(
        [
            f"**Model**: `{fit.formula}` ({fit.method}; converged: {fit.converged})",
            f"**Variance components**: school {fit.var_school:.3f}, pupil {fit.var_pupil:.3f}, "
            f"ICC {fit.icc:.3f}; unconditional total SD {result.sd_total:.3f}",
            coefficients.round(4).to_markdown(),
            f"**Effect size** g = {result.effect_size:.3f} (95% CI {result.ci_low:.3f} to "
            f"{result.ci_high:.3f}), p = {result.p_value:.4f}",
        ]
    )
