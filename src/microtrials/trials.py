"""One trial's analysis: who is analysed, the fitted models, effect sizes, pooling and evidence strength."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import duckdb
import numpy as np
import pandas as pd

from microtrials import reml
from microtrials.effect_sizes import (
    EffectSize,
    hedges_g_total,
    hedges_g_within,
    school_hedges_g,
    standardised_effect,
    wald_p_value,
)
from microtrials.evidence import (
    Attrition,
    BaselineBalance,
    EvidenceStrength,
    attrition_by_arm,
    baseline_balance,
    evidence_strength,
    mdes,
)
from microtrials.guidance import FSM_MIN_PUPILS, FSM_MIN_SCHOOLS_BOTH_ARMS, READY_MIN_SCHOOLS_BOTH_ARMS
from microtrials.models import ARM, ARM_FSM, BASELINE, FSM, MixedFit, fit_mixedlm
from microtrials.pooling import RandomEffectsPool, pool_schools

Subset = Literal["all", "fsm", "fsm_known"]
# fitter(covariates, random_slope=..., subset=...) -> MixedFit, on one trial's analysed pupils.
Fitter = Callable[..., MixedFit]


@dataclass(frozen=True)
class TrialResult:
    """Everything computed for one trial (intervention x outcome_measure).

    Model-based fields are None when the model could not be estimated; ``notes`` says why.
    """

    intervention: str
    outcome_measure: str
    uses_baseline: bool
    schools: int
    schools_both_arms: int
    pupils_randomised: int
    pupils_analysed: int
    attrition: Attrition
    primary: MixedFit | None = None
    unconditional: MixedFit | None = None
    random_slope: MixedFit | None = None
    interaction: MixedFit | None = None
    fsm_model: MixedFit | None = None
    headline: EffectSize | None = None
    within: EffectSize | None = None
    p_value: float | None = None
    fsm: EffectSize | None = None
    fsm_pupils: int = 0
    pool: RandomEffectsPool | None = None
    per_school: pd.DataFrame = field(default_factory=pd.DataFrame)
    balance: BaselineBalance | None = None
    mdes: float | None = None
    strength: EvidenceStrength | None = None
    notes: tuple[str, ...] = ()

    @property
    def ready(self) -> bool:
        """Publishable: the model was estimated and enough schools have both arms (guidance)."""
        return self.headline is not None and self.schools_both_arms >= READY_MIN_SCHOOLS_BOTH_ARMS

    @property
    def sd_total(self) -> float | None:
        """Total SD of the unconditional model: sqrt(var_school + var_pupil)."""
        return None if self.headline is None else self.headline.sd


def analysed_pupils(pupils: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """The pupils in the primary model, and whether it adjusts for baseline.

    The trial uses baseline when any delivered pupil has a baseline score (the contract's
    "when the trial has baseline scores"); then pupils need both an outcome and a baseline.
    """
    uses_baseline = bool(pupils["baseline"].notna().any())
    needed = ["outcome", "baseline"] if uses_baseline else ["outcome"]
    return pupils.dropna(subset=needed), uses_baseline


def frame_fitter(analysed: pd.DataFrame, uses_baseline: bool) -> Fitter:
    """REML from sufficient statistics computed from a frame of one trial's analysed pupils."""

    def fit(covariates: list[str], random_slope: bool = False, subset: Subset = "all") -> MixedFit:
        stats = reml.school_stats_from_frame(
            analysed, use_baseline=uses_baseline, fsm_only=subset == "fsm", need_fsm=subset == "fsm_known"
        )
        return reml.fit_reml(stats, covariates, random_slope=random_slope)

    return fit


def warehouse_fitter(
    con: duckdb.DuckDBPyConnection, intervention: str, outcome_measure: str, uses_baseline: bool
) -> Fitter:
    """REML from sufficient statistics computed in DuckDB (sql/school_stats.sql): no pupil rows leave it."""

    def fit(covariates: list[str], random_slope: bool = False, subset: Subset = "all") -> MixedFit:
        stats = reml.school_stats(
            con, intervention, outcome_measure, use_baseline=uses_baseline,
            fsm_only=subset == "fsm", need_fsm=subset == "fsm_known",
        )
        return reml.fit_reml(stats, covariates, random_slope=random_slope)

    return fit


def statsmodels_fitter(analysed: pd.DataFrame) -> Fitter:
    """statsmodels MixedLM on the pupil rows: the cross-check of the REML fitter."""

    def fit(covariates: list[str], random_slope: bool = False, subset: Subset = "all") -> MixedFit:
        rows = analysed
        if subset == "fsm":
            rows = analysed[analysed[FSM] == 1]
        elif subset == "fsm_known":
            rows = analysed[analysed[FSM].notna()]
        return fit_mixedlm(rows, covariates, random_slope=random_slope)

    return fit


def analyse_trial(pupils: pd.DataFrame, fitter: Fitter | None = None) -> TrialResult:
    """Analyse one trial's delivered rows (school_urn, arm 1/0, outcome, baseline, fsm 1/0/NaN).

    Headline g = beta_arm / sqrt(var_school + var_pupil), the variances from the unconditional
    model ``outcome ~ 1 + (1 | school)`` on the analysed pupils; 95% CI (beta +/- 1.96 SE) / SD;
    p-value two-sided from z = beta / SE. See docs/methods.md for every other figure.
    """
    intervention = str(pupils["intervention"].iloc[0])
    outcome_measure = str(pupils["outcome_measure"].iloc[0])
    analysed, uses_baseline = analysed_pupils(pupils)
    arms_per_school = analysed.groupby("school_urn")[ARM].nunique()
    base = dict(
        intervention=intervention,
        outcome_measure=outcome_measure,
        uses_baseline=uses_baseline,
        schools=int(len(arms_per_school)),
        schools_both_arms=int((arms_per_school == 2).sum()),
        pupils_randomised=int(len(pupils)),
        pupils_analysed=int(len(analysed)),
        attrition=attrition_by_arm(pupils[ARM], analysed[ARM]),
    )
    notes = _design_notes(pupils, arms_per_school, uses_baseline)
    if analysed[ARM].nunique() < 2 or len(arms_per_school) < 1:
        notes.append("not estimable: the analysed pupils are all in one arm")
        return TrialResult(**base, notes=tuple(notes))
    fit = fitter or frame_fitter(analysed, uses_baseline)
    covariates = [ARM, BASELINE] if uses_baseline else [ARM]
    primary = fit(covariates)
    unconditional = fit([])
    notes += _fit_notes("primary", primary) + _fit_notes("unconditional", unconditional)
    beta, se = primary.params[ARM], primary.bse[ARM]
    headline = hedges_g_total(beta, se, unconditional.var_school, unconditional.var_pupil)
    slope, slope_notes = _random_slope(fit, covariates)
    per_school = _per_school(analysed, primary, slope, headline.sd)
    pool = pool_schools(per_school.dropna(subset=["g"])) if per_school["g"].notna().sum() >= 2 else None
    if pool is None:
        notes.append("two-stage pooling needs at least 2 schools with 2 analysed pupils in each arm")
    fsm_model, fsm, fsm_pupils, fsm_notes = _fsm_effect(fit, analysed, covariates, headline.sd)
    interaction = _optional(fit, [ARM, FSM, ARM_FSM] + covariates[1:], subset="fsm_known")
    balance = baseline_balance(analysed) if uses_baseline else None
    mdes_value = mdes(se, headline.sd)
    strength = evidence_strength(
        mdes_value, base["attrition"].overall, None if balance is None else balance.difference,
        base["schools_both_arms"],
    )
    return TrialResult(
        **base,
        primary=primary,
        unconditional=unconditional,
        random_slope=slope,
        interaction=interaction,
        fsm_model=fsm_model,
        headline=headline,
        within=hedges_g_within(beta, se, unconditional.var_pupil),
        p_value=wald_p_value(beta, se),
        fsm=fsm,
        fsm_pupils=fsm_pupils,
        pool=pool,
        per_school=per_school,
        balance=balance,
        mdes=mdes_value,
        strength=strength,
        notes=tuple(notes + slope_notes + fsm_notes),
    )


def _optional(fit: Fitter, covariates: list[str], **kwargs) -> MixedFit | None:
    """A secondary model, or None when its data cannot identify it (e.g. no variation in a column)."""
    try:
        result = fit(covariates, **kwargs)
    except (ValueError, np.linalg.LinAlgError, ArithmeticError) + _user_errors():
        return None
    return result if all(math.isfinite(v) for v in result.params.values()) else None


def _user_errors() -> tuple[type[Exception], ...]:
    from microtrials.errors import MicrotrialsError

    return (MicrotrialsError,)


def _random_slope(fit: Fitter, covariates: list[str]) -> tuple[MixedFit | None, list[str]]:
    """The multisite model (1 + arm | school), as eefAnalytics mstFREQ; falls back visibly."""
    slope = _optional(fit, covariates, random_slope=True)
    if slope is None:
        return None, ["random-slope model could not be fitted: per-school shrunken estimates use the random-intercept model"]
    if not slope.converged:
        return slope, ["random-slope model did not converge: per-school shrunken estimates use the random-intercept model"]
    if slope.singular:
        return slope, ["the effect did not measurably vary between schools (random-slope model singular: "
                       "slope SD or correlation on its boundary, as lme4 flags)"]
    return slope, []


def _per_school(analysed: pd.DataFrame, primary: MixedFit, slope: MixedFit | None, sd_total: float) -> pd.DataFrame:
    """Each school's own Hedges' g with CI, and its shrunken estimate in effect-size units.

    shrunken_g = (beta_arm + u_arm,j) / sd_total from the random-slope model when it converged;
    otherwise the random-intercept model has no school-specific arm effect, so every school's
    shrunken estimate is beta_arm / sd_total.
    """
    counts = analysed.groupby(["school_urn", ARM]).size().unstack(ARM).reindex(columns=[1.0, 0.0]).fillna(0)
    frame = pd.DataFrame({
        "school_urn": counts.index.astype(str),
        "n_intervention": counts[1.0].astype(int).to_numpy(),
        "n_control": counts[0.0].astype(int).to_numpy(),
    })
    own = school_hedges_g(analysed).drop(columns=["n_intervention", "n_control"])
    frame = frame.merge(own, on="school_urn", how="left")
    if slope is not None and slope.converged and "arm" in slope.blups.columns:
        shrunken = (slope.params[ARM] + slope.blups["arm"]) / sd_total
        frame["shrunken_g"] = frame["school_urn"].map(shrunken.rename(index=str)).astype(float)
    else:
        frame["shrunken_g"] = primary.params[ARM] / sd_total
    return frame.sort_values("school_urn").reset_index(drop=True)


def _fsm_effect(
    fit: Fitter, analysed: pd.DataFrame, covariates: list[str], sd_total: float
) -> tuple[MixedFit | None, EffectSize | None, int, list[str]]:
    """The primary model on FSM pupils only, standardised by the headline's total SD.

    Blank when fewer than 2 schools have FSM pupils in both arms or fewer than 30 FSM pupils
    are analysed (guidance.FSM_MIN_SCHOOLS_BOTH_ARMS, FSM_MIN_PUPILS).
    """
    fsm_rows = analysed[analysed[FSM] == 1]
    schools = int((fsm_rows.groupby("school_urn")[ARM].nunique() == 2).sum())
    if schools < FSM_MIN_SCHOOLS_BOTH_ARMS or len(fsm_rows) < FSM_MIN_PUPILS:
        return None, None, len(fsm_rows), [
            f"FSM effect not estimated: {len(fsm_rows)} FSM pupils analysed in {schools} schools with both "
            f"arms (needs at least {FSM_MIN_PUPILS} pupils and {FSM_MIN_SCHOOLS_BOTH_ARMS} schools)"
        ]
    model = _optional(fit, covariates, subset="fsm")
    if model is None:
        return None, None, len(fsm_rows), ["FSM effect not estimated: the FSM-only model could not be fitted"]
    effect = standardised_effect(model.params[ARM], model.bse[ARM], sd_total)
    notes = _fit_notes("FSM-only", model)
    return model, effect, len(fsm_rows), notes


def _design_notes(pupils: pd.DataFrame, arms_per_school: pd.Series, uses_baseline: bool) -> list[str]:
    """Plain-English caveats about the design and the data."""
    notes = []
    one_arm = int((arms_per_school < 2).sum())
    if one_arm:
        notes.append(
            f"{one_arm} school{'s' if one_arm > 1 else ''} had only one arm "
            "(counted in schools and the one-stage model, not in the two-stage pooling)"
        )
    if int((arms_per_school == 2).sum()) < READY_MIN_SCHOOLS_BOTH_ARMS:
        notes.append(f"NOT READY: fewer than {READY_MIN_SCHOOLS_BOTH_ARMS} schools with analysed pupils in both arms")
    if uses_baseline:
        no_baseline = int((pupils["outcome"].notna() & pupils["baseline"].isna()).sum())
        if no_baseline:
            notes.append(f"{no_baseline} pupils with an outcome but no baseline were not analysed")
    else:
        notes.append("no baseline scores: model not adjusted for prior attainment")
    return notes


def _fit_notes(label: str, fit: MixedFit) -> list[str]:
    """Say when a model did not converge or is singular (school variance on the boundary)."""
    notes = []
    if not fit.converged:
        notes.append(f"{label} model did not converge")
    if fit.singular:
        notes.append(f"{label} model is singular (school variance estimated as 0)")
    return notes
