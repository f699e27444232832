"""Trial results: models, effect sizes, pooling and evidence strength for every trial, stored in the warehouse."""

import base64

import dagster as dg
import pandas as pd

from microtrials import summary
from microtrials.publish import history
from microtrials.publish import plots
from microtrials.ingest import registry as reg
from microtrials.stats import trial_store
from microtrials.publish.evidence_table import evidence_row
from microtrials.stats.trials import TrialResult
from pipelines.assets.registry import trials_file
from pipelines.launch import officer_step
from pipelines.resources import Settings, Warehouse

# A trial with more schools than this gets no per-school table or PNG forest plot in its metadata
# (they would grow the run's event log with every school): the extremes and where to find the rest.
METADATA_SCHOOLS = 50


@dg.asset(
    group_name="statistics",
    kinds={"duckdb", "python"},
    pool="warehouse",
    deps=["pupils", "registry"],
    code_version=trial_store.CODE_VERSION,
    description="Per trial: with a registry (trials.csv), each registered round of an intervention "
    "(names and aliases matched by names.match_key, schools by the plan or the extract's round) and, "
    "for an intervention with two or more rounds with results, a cumulative row ('all rounds': "
    "outcome ~ arm + baseline + round + (1 | school:round)); primary and registered secondary outcomes "
    "are published, exploratory outcomes and unregistered interventions go to `exploratory_results` "
    "for evaluators only, and the officer's messages to `registry_messages`. Without a registry every "
    "(intervention x outcome_measure, spellings matched by names.match_key) is a trial. Each: "
    "the primary model outcome ~ arm [+ baseline + baseline_missing] + (1 | school) by exact REML "
    "from per-school cell sums computed in DuckDB (no pupil rows leave it), the unconditional, "
    "random-slope and FSM models, per-school ANCOVA effects pooled by REML with t inference "
    "(tau, I2, prediction interval, P(new school benefits), empirical-Bayes estimates) and "
    "evidence strength. Each trial is analysed inside its own boundary: not_estimable trials get "
    "a row with the reason; a numerical failure keeps that trial's previous row as not_refreshed. "
    "Writes `trial_results`, `school_results` and `trial_spellings`.",
)
@officer_step
def trial_results(context: dg.AssetExecutionContext, settings: Settings, warehouse_db: Warehouse) -> dg.MaterializeResult:
    path = trials_file(settings)
    registry = reg.load_registry(path)
    if registry is None:
        context.log.warning(reg.no_registry_warning(path))
    with warehouse_db.connect() as con:
        versions = history.registry_versions(con) if registry is not None else []
        run = trial_store.refresh(con, registry, versions=versions)
        trial_store.store(con, run)
    table = run.trial_table
    for r in run.results:
        # an exploratory or unregistered result is never published, whatever its analysis status
        shown = "" if r.outcome_role in ("exploratory", "unregistered") else f" [{r.status}]"
        # the statistics' notes are for evaluators (the run's log in the UI), not the officer's terminal
        context.log.debug(f"{_label(r)}{shown}: {evidence_row(r)['notes']}")
    for label, reason in run.failures.items():
        context.log.warning(f"{label}: {reason}")
    for message in run.messages.itertuples(index=False):
        # the demo's deliberately unregistered trial is a demonstration (INFO); in a workspace, an error is a WARNING
        shown = summary.demonstration(message.rule, message.intervention, settings.demo)
        if shown:
            context.log.info(shown)
        else:
            (context.log.warning if message.level == "error" else context.log.info)(message.message)
    merged = [t for t in run.spellings if t.merged]
    exploratory = run.exploratory_table
    return dg.MaterializeResult(
        metadata={
            "registry": str(path) if registry is not None else reg.no_registry_warning(path),
            "officer_messages": _md(run.messages[["level", "rule", "message"]]),
            "plan": _md(run.progress[["intervention", "round", "end_date", "planned", "delivered", "awaited",
                                      "awaited_urns", "withdrawn_urns", "unplanned_urns", "status_note"]]),
            "exploratory (evaluators only, not published)": _md(
                exploratory[["intervention", "outcome_measure", "round", "outcome_role", "schools", "pupils_analysed",
                             "effect_size", "ci_low", "ci_high", "status"]]),
            "dagster/row_count": len(table),
            "dagster/column_schema": dg.TableSchema(
                columns=[dg.TableColumn(name, str(dtype), description=trial_store.COLUMN_DESCRIPTIONS.get(name))
                         for name, dtype in table.dtypes.items()]
            ),
            "trials": dg.MetadataValue.md(_trials_markdown(table)),
            "not_refreshed": len(run.failures),
            "not_estimable": int((table["status"] == "not_estimable").sum()),
            "merged_spellings": dg.MetadataValue.md(_spellings_markdown(merged)) if merged else "none",
            **_numeric_metadata(run.results),
            **{_label(r): dg.MetadataValue.md(trial_markdown(r)) for r in run.results},
        }
    )


def _label(result: TrialResult) -> str:
    """A trial's name in logs and metadata: intervention / outcome_measure [/ round] [(exploratory)]."""
    label = f"{result.intervention} / {result.outcome_measure}"
    if result.round:
        label += f" / {result.round}"
    if result.outcome_role in ("exploratory", "unregistered"):
        label += f" ({result.outcome_role}, not published)"
    return label


def _md(frame: pd.DataFrame) -> dg.MetadataValue:
    return dg.MetadataValue.md(frame.to_markdown(index=False) if len(frame) else "(none)")


def _numeric_metadata(results: list[TrialResult]) -> dict[str, float]:
    """Small numbers per trial, so Dagster plots each trial's history across materializations."""
    out: dict[str, float] = {}
    for r in results:
        if r.headline is None:
            continue
        label = _label(r)
        figures = {"effect_size": r.headline.g, "ci_low": r.headline.ci_low, "ci_high": r.headline.ci_high,
                   "tau": None if r.spread is None else r.spread.tau,
                   "random-intercept effect_size (sensitivity)": None if r.sensitivity is None else r.sensitivity.g,
                   "evidence_strength": None if r.strength is None else r.strength.score}
        out.update({f"{label}: {k}": float(v) for k, v in figures.items() if v is not None})
    return out


def _spellings_markdown(merged) -> str:
    rows = [(t.intervention, t.outcome_measure, i, o, n) for t in merged for i, o, n in t.rows]
    return pd.DataFrame(rows, columns=["trial", "outcome_measure", "delivered intervention",
                                       "delivered outcome_measure", "rows"]).to_markdown(index=False)


def _trials_markdown(table: pd.DataFrame) -> str:
    columns = ["intervention", "outcome_measure", "round", "outcome_role", "schools", "pupils_analysed", "effect_size",
               "ci_low", "ci_high", "tau", "evidence_strength", "status"]
    return table[columns].to_markdown(index=False)


def trial_markdown(result: TrialResult) -> str:
    """What an evaluator wants for one trial: models, variance components, effects, schools, plot."""
    if result.primary is None:
        return f"**{result.status}**: " + "; ".join(result.notes)
    parts = []
    parts.append(f"**Headline model**: {result.model_choice}")
    for label, fit in (("Primary (headline)", result.primary), ("Unconditional", result.unconditional),
                       ("Random slope (multisite)", result.random_slope),
                       ("Random intercept (sensitivity)", result.random_intercept), ("Arm x FSM", result.interaction),
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
         (("g (total SD)", result.headline), ("g (within-school SD)", result.within),
          ("g, random-intercept model (sensitivity)", result.sensitivity), ("g, FSM pupils", result.fsm))
         if e is not None],
        columns=["effect size", "g", "ci_low", "ci_high"],
    )
    parts += ["**Effect sizes**", effects.round(4).to_markdown(index=False)]
    if result.spread is not None:
        m = result.spread
        pi = "blank (fewer than 3 schools)" if m.pi_low != m.pi_low else f"{m.pi_low:.4f} to {m.pi_high:.4f}"
        parts.append(
            f"**Variation between schools** (the headline model, k = {m.k} schools with both arms, t on {m.df} df): "
            f"tau = {m.tau:.4f}, I2 = {m.i2:.1f}%; prediction interval {pi}; "
            f"P(new school benefits) = {m.p_new_positive:.3f}"
        )
    if result.pool is not None:
        p = result.pool
        parts.append(
            f"*Two-stage check (not published; overstates the variation when schools are small)*: the schools' own "
            f"ANCOVAs pooled by REML (k = {p.k}): mean {p.mu:.4f} (SE {p.se:.4f}), tau = {p.tau:.4f}, I2 = {p.i2:.1f}%, "
            f"Q = {p.q:.2f} (p = {p.q_p:.4f})"
        )
    parts += _school_parts(result)
    a = result.attrition
    parts.append(f"**Attrition**: {a.overall:.1f}% overall, {a.intervention:.1f}% intervention, {a.control:.1f}% control")
    if result.balance is not None:
        parts.append(f"**Baseline balance**: {result.balance.difference:.3f} SD between arms among analysed pupils "
                     f"(WWC: {result.balance.flag}); MDES {result.mdes:.3f}")
    if result.strength is not None:
        parts.append(f"**Evidence strength {result.strength.score}/5**: " + "; ".join(result.strength.reasons))
    return "\n\n".join(parts)


def _school_parts(result: TrialResult) -> list[str]:
    """The per-school table and forest plot PNG for a trial of at most METADATA_SCHOOLS schools; for a
    larger one the 5 highest and 5 lowest school effects and where every school is (the metadata of a
    materialization stays a few KB however many schools a trial has)."""
    schools = result.per_school
    heading = ("**Per-school effects** (g: this school on its own, its own ANCOVA / total SD; eb_g: its shrunken "
               "effect, the headline plus its arm-slope BLUP / total SD)")
    if len(schools) <= METADATA_SCHOOLS:
        parts = [heading, schools.round(4).to_markdown(index=False)]
        plot = _forest_png(result)
        if plot is not None:
            parts.append(f"![forest plot](data:image/png;base64,{base64.b64encode(plot).decode()})")
        return parts
    ranked = schools.sort_values("g", ascending=False, na_position="last", kind="stable")
    ranked = ranked[ranked["g"].notna()]
    shown = pd.concat([ranked.head(5), ranked.tail(5)]).drop_duplicates()
    return [
        f"{heading}: {len(schools):,} schools, {len(ranked):,} with their own estimate; the 5 highest and the "
        "5 lowest g. Every school is in the warehouse table `school_results` and the trial's published "
        "schools.csv; its forest plot (all schools, ranked) is forest.svg on the trial's page of the site.",
        shown.round(4).to_markdown(index=False),
    ]


def _forest_png(result: TrialResult) -> bytes | None:
    """The forest plot as published: the diamond is effect_size and its CI, the PI around it,
    squares each school on its own (its ANCOVA), circles its shrunken effect from the headline model."""
    if result.headline is None:
        return None
    h, p = result.headline, result.spread
    prediction = None if p is None or p.pi_low != p.pi_low else (p.pi_low, p.pi_high)
    return plots.forest_plot_png(result.per_school, (h.g, h.ci_low, h.ci_high),
                                 _label(result), prediction)
