"""One trial's analysis: who is analysed, the fitted models and the headline effect size."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from microtrials.models import ARM, BASELINE, MixedFit, fit_mixedlm


@dataclass(frozen=True)
class TrialResult:
    """Everything computed for one trial (intervention x outcome_measure)."""

    intervention: str
    outcome_measure: str
    uses_baseline: bool
    schools: int
    schools_both_arms: int
    pupils_randomised: int
    pupils_analysed: int
    primary: MixedFit
    unconditional: MixedFit
    effect_size: float
    ci_low: float
    ci_high: float
    p_value: float
    notes: tuple[str, ...] = field(default=())

    @property
    def attrition_pct(self) -> float:
        """100 x (randomised - analysed) / randomised."""
        return 100.0 * (self.pupils_randomised - self.pupils_analysed) / self.pupils_randomised

    @property
    def sd_total(self) -> float:
        """Total SD of the unconditional model: sqrt(var_school + var_pupil)."""
        return float(np.sqrt(self.unconditional.var_school + self.unconditional.var_pupil))


def analysed_pupils(pupils: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """The pupils in the primary model, and whether it adjusts for baseline.

    The trial uses baseline when any delivered pupil has a baseline score (the contract's
    "when the trial has baseline scores"); then pupils need both an outcome and a baseline.
    """
    uses_baseline = bool(pupils["baseline"].notna().any())
    needed = ["outcome", "baseline"] if uses_baseline else ["outcome"]
    return pupils.dropna(subset=needed), uses_baseline


def analyse_trial(pupils: pd.DataFrame) -> TrialResult:
    """Fit the primary and unconditional models for one trial's pupils and derive the effect size.

    ``pupils`` holds one trial's delivered rows: school_urn, arm (1/0), outcome, baseline, fsm.
    Effect size g = beta_arm / sqrt(var_school + var_pupil), the variances from the
    unconditional model ``outcome ~ 1 + (1 | school)`` on the analysed pupils; its 95% CI is
    (beta +/- 1.96 SE) / SD and the p-value is two-sided from z = beta / SE.
    """
    intervention = str(pupils["intervention"].iloc[0])
    outcome_measure = str(pupils["outcome_measure"].iloc[0])
    analysed, uses_baseline = analysed_pupils(pupils)
    arms_per_school = analysed.groupby("school_urn")[ARM].nunique()
    schools_both = int((arms_per_school == 2).sum())
    covariates = [ARM, BASELINE] if uses_baseline else [ARM]
    primary = fit_mixedlm(analysed, covariates)
    unconditional = fit_mixedlm(analysed, [])
    sd_total = float(np.sqrt(unconditional.var_school + unconditional.var_pupil))
    beta, se = primary.params[ARM], primary.bse[ARM]
    z975 = float(stats.norm.ppf(0.975))
    notes = _notes(pupils, analysed, arms_per_school, primary, unconditional, uses_baseline)
    return TrialResult(
        intervention=intervention,
        outcome_measure=outcome_measure,
        uses_baseline=uses_baseline,
        schools=int(len(arms_per_school)),
        schools_both_arms=schools_both,
        pupils_randomised=int(len(pupils)),
        pupils_analysed=int(len(analysed)),
        primary=primary,
        unconditional=unconditional,
        effect_size=beta / sd_total,
        ci_low=(beta - z975 * se) / sd_total,
        ci_high=(beta + z975 * se) / sd_total,
        p_value=float(2 * stats.norm.sf(abs(beta / se))),
        notes=tuple(notes),
    )


def _notes(
    pupils: pd.DataFrame,
    analysed: pd.DataFrame,
    arms_per_school: pd.Series,
    primary: MixedFit,
    unconditional: MixedFit,
    uses_baseline: bool,
) -> list[str]:
    """Plain-English caveats for the evidence table's notes column."""
    notes = []
    one_arm = int((arms_per_school < 2).sum())
    if one_arm:
        notes.append(f"{one_arm} school{'s' if one_arm > 1 else ''} had only one arm")
    if uses_baseline:
        no_baseline = int((pupils["outcome"].notna() & pupils["baseline"].isna()).sum())
        if no_baseline:
            notes.append(f"{no_baseline} pupils with an outcome but no baseline were not analysed")
    else:
        notes.append("no baseline scores: model not adjusted for prior attainment")
    for label, fit in (("primary", primary), ("unconditional", unconditional)):
        if not fit.converged:
            notes.append(f"{label} model did not converge")
        if fit.singular:
            notes.append(f"{label} model is singular (school variance estimated as 0)")
    return notes
