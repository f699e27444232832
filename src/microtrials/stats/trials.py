"""One trial's analysis: who is analysed, the fitted models, effect sizes, pooling and evidence strength."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import pandas as pd

from microtrials.ingest import names
from microtrials.stats import reml
from microtrials.stats.effect_sizes import (
    EffectSize,
    hedges_g_total,
    hedges_g_within,
    school_ancova_effects,
    standardised_effect,
    wald_p_value,
)
from microtrials.errors import MicrotrialsError
from microtrials.stats.evidence import (
    Attrition,
    BaselineBalance,
    EvidenceStrength,
    attrition_from_counts,
    balance_from_summaries,
    evidence_strength,
    mdes,
)
from microtrials.guidance import (
    FSM_MIN_PUPILS,
    FSM_MIN_SCHOOLS_BOTH_ARMS,
    MIN_PUPILS_PER_ARM,
    MIN_PUPILS_PER_SCHOOL_ESTIMATE,
    READY_MIN_SCHOOLS_BOTH_ARMS,
    Z_975,
)
from microtrials.stats.models import ARM, ARM_FSM, BASELINE, BASELINE_MISSING, FSM, INTERCEPT, MixedFit
from microtrials.stats.pooling import PI_MIN_SCHOOLS, MultisiteSpread, TPool, multisite_spread, random_effects_reml_t

Status = Literal["published", "interim", "not_estimable", "not_refreshed"]
PUBLISHED, INTERIM, NOT_ESTIMABLE, NOT_REFRESHED = "published", "interim", "not_estimable", "not_refreshed"
# Columns of TrialResult.per_school (school_results adds the trial's names before them).
SCHOOL_FIELDS = ["school_urn", "n_intervention", "n_control", "g", "var", "ci_low", "ci_high", "eb_g", "note"]


class ModelFailure(Exception):
    """A numerical failure of an estimable trial's primary or unconditional model."""


@dataclass(frozen=True)
class TrialResult:
    """Everything computed for one trial (intervention x outcome_measure).

    ``status`` is ``published`` (estimated), ``not_estimable`` (the data cannot identify the
    effect: ``reason`` says why in plain words and every model-based field is None) or, set by
    the caller, ``interim`` / ``not_refreshed``.
    """

    intervention: str
    outcome_measure: str
    uses_baseline: bool
    schools: int
    schools_both_arms: int
    pupils_randomised: int
    pupils_analysed: int
    attrition: Attrition
    status: Status = PUBLISHED
    reason: str = ""
    pupils_no_baseline: int = 0
    primary: MixedFit | None = None
    unconditional: MixedFit | None = None
    random_slope: MixedFit | None = None  # the (1 + arm | school) fit, also when the headline falls back
    random_intercept: MixedFit | None = None  # the (1 | school) fit: the evaluators' sensitivity figure
    sensitivity: EffectSize | None = None  # effect size of the random-intercept fit, same total SD
    model_choice: str = ""  # which model gave the headline, in plain words
    spread: MultisiteSpread | None = None  # tau, I2, prediction interval, P(new school) from the headline model
    interaction: MixedFit | None = None
    fsm_model: MixedFit | None = None
    headline: EffectSize | None = None
    within: EffectSize | None = None
    p_value: float | None = None
    fsm: EffectSize | None = None
    fsm_pupils: int = 0
    pool: TPool | None = None  # two-stage pooling of the schools' own ANCOVAs: an evaluators' check, never published
    per_school: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SCHOOL_FIELDS))
    balance: BaselineBalance | None = None
    mdes: float | None = None
    strength: EvidenceStrength | None = None
    notes: tuple[str, ...] = ()
    spellings: tuple[tuple[str, str, int], ...] = ()
    round: str | None = None  # the registered round, "all rounds" (cumulative) or None (no registry)
    outcome_role: str | None = None  # primary / secondary (published), exploratory / unregistered
    extras: dict = field(default_factory=dict)  # the registry's columns (registry.evidence_columns), round_order

    @property
    def ready(self) -> bool:
        """Publishable: the model was estimated and enough schools have both arms (guidance)."""
        return self.headline is not None and self.schools_both_arms >= READY_MIN_SCHOOLS_BOTH_ARMS

    @property
    def sd_total(self) -> float | None:
        """Total SD of the unconditional model: sqrt(var_school + var_pupil)."""
        return None if self.headline is None else self.headline.sd

    @property
    def converged(self) -> bool:
        """The primary and unconditional models converged (True when nothing was fitted)."""
        return all(f is None or f.converged for f in (self.primary, self.unconditional))


@dataclass(frozen=True)
class TrialSpellings:
    """One trial's published names and every delivered spelling that matched them (names.match_key)."""

    intervention: str
    outcome_measure: str
    interventions: tuple[str, ...]
    outcome_measures: tuple[str, ...]
    rows: tuple[tuple[str, str, int], ...]  # (intervention, outcome_measure, rows) as delivered

    @property
    def merged(self) -> bool:
        """More than one spelling was delivered for this trial."""
        return len(self.rows) > 1


def group_spellings(spellings: pd.DataFrame) -> list[TrialSpellings]:
    """Group delivered (intervention, outcome_measure, rows) by ``names.match_key`` of both names.

    The published names are ``names.display_name`` of each name's spellings (most rows wins);
    sorted by the published names.
    """
    groups: dict[tuple[str, str], list[tuple[str, str, int]]] = {}
    for i, o, n in spellings[["intervention", "outcome_measure", "rows"]].itertuples(index=False):
        groups.setdefault((names.match_key(i), names.match_key(o)), []).append((str(i), str(o), int(n)))
    trials = []
    for rows in groups.values():
        rows.sort()
        trials.append(TrialSpellings(
            intervention=names.display_name((i, n) for i, _, n in rows),
            outcome_measure=names.display_name((o, n) for _, o, n in rows),
            interventions=tuple(sorted({i for i, _, _ in rows})),
            outcome_measures=tuple(sorted({o for _, o, _ in rows})),
            rows=tuple(rows),
        ))
    return sorted(trials, key=lambda t: (t.intervention, t.outcome_measure))


def analyse_trial(pupils: pd.DataFrame) -> TrialResult:
    """Analyse one trial from a frame of its delivered rows (school_urn, arm 1/0, outcome, baseline,
    fsm 1/0/NaN, intervention, outcome_measure): :func:`analyse_cells` on ``reml.cells_from_frame``."""
    return analyse_cells(
        reml.cells_from_frame(pupils), str(pupils["intervention"].iloc[0]), str(pupils["outcome_measure"].iloc[0])
    )


def _by_arm(cells: pd.DataFrame) -> tuple[int, int]:
    """(intervention, control) pupil counts of some cells."""
    arm = cells["arm"].to_numpy(dtype=float)
    n = cells["n"].to_numpy(dtype=np.int64)
    return int(n[arm == 1].sum()), int(n[arm == 0].sum())


def _school_arm_counts(cells: pd.DataFrame) -> pd.DataFrame:
    """Per school: analysed pupils in intervention (n1) and control (n0)."""
    table = cells.pivot_table(index="school_urn", columns="arm", values="n", aggfunc="sum", fill_value=0)
    table = table.reindex(columns=[1.0, 0.0], fill_value=0)
    return pd.DataFrame({"n1": table[1.0].astype(int), "n0": table[0.0].astype(int)}, index=table.index.astype(str))


def _within_variation(cells: pd.DataFrame) -> float:
    """Sum over school x arm of the outcome's sum of squares about its mean: 0 when no outcome
    varies within any school's arm (then no model can separate pupils from schools)."""
    g = cells.groupby(["school_urn", "arm"])[["n", "sum_y", "sum_yy"]].sum()
    return float((g["sum_yy"] - g["sum_y"] ** 2 / g["n"]).clip(lower=0).sum())


# Between a school's URN and its round in the group label of the cumulative model (school:round).
UNIT_SEP = " | "


def round_dummies(rounds: list[str] | tuple[str, ...]) -> list[str]:
    """The design columns of the round fixed effect: a 0/1 column per round but the first."""
    return [f"round[{r}]" for r in rounds[1:]]


def split_unit(label: str) -> tuple[str, str | None]:
    """A cumulative group label back as (school_urn, round); (label, None) for a plain school."""
    urn, sep, round_name = str(label).partition(UNIT_SEP)
    return (urn, round_name) if sep else (urn, None)


def _with_rounds(cells: pd.DataFrame, rounds: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Cells of several rounds (a ``round`` column) as school:round groups with round dummies."""
    cells = cells.copy()
    labels = cells["round"].astype(str)
    cells["school_urn"] = cells["school_urn"].astype(str) + UNIT_SEP + labels
    dummies = round_dummies(rounds)
    for name, column in zip(rounds[1:], dummies):
        cells[column] = (labels == name).astype(float)
    return cells, dummies


def analyse_cells(cells: pd.DataFrame, intervention: str, outcome_measure: str,
                  rounds: list[str] | tuple[str, ...] | None = None) -> TrialResult:
    """Analyse one trial from its cell sums (``reml.trial_cells`` / ``reml.cells_from_frame``).

    The headline model is the multisite model ``outcome ~ arm + baseline + (1 + arm | school)`` by
    REML (eefAnalytics ``mstFREQ``); when its slope variance is estimated at 0, or it does not
    converge, the random-intercept model ``(1 | school)`` (the notes say which and why). With
    ``rounds`` (two or more round names, oldest first; ``cells`` then has a ``round`` column) this is
    the cumulative analysis of every round: school:round in place of school and round as 0/1 fixed
    effects (the first round the reference); ``schools`` counts distinct schools.

    Who is analysed: every pupil with an outcome. When the trial has baseline scores (any
    delivered pupil has one), a pupil without a baseline stays in the model with baseline set to
    the mean baseline of the analysed pupils and an indicator "baseline missing" (White &
    Thompson 2005; Groenwold et al. 2012). Headline g = beta_arm / sqrt(var_school + var_pupil),
    the variances from the unconditional model ``outcome ~ 1 + (1 | school)`` on the analysed
    pupils; 95% CI (beta +/- 1.96 SE) / SD; p two-sided from z = beta / SE; tau, the prediction
    interval, P(new school benefits) and each school's shrunken effect from the same model. Raises
    ``ModelFailure`` when neither the multisite nor the random-intercept model, or the
    unconditional model, of an estimable trial converges. Numerical warnings become notes. See
    docs/methods.md for every other figure.
    """
    cells = reml.common_centre(cells[cells["n"] > 0])
    dummies: list[str] = []
    if rounds:
        cells, dummies = _with_rounds(cells, list(rounds))
    analysed = cells[cells["has_outcome"].astype(bool)]
    uses_baseline = bool(cells["has_baseline"].astype(bool).any())
    with_base = analysed[analysed["has_baseline"].astype(bool)]
    no_baseline = int(analysed["n"].sum() - with_base["n"].sum()) if uses_baseline else 0
    counts = _school_arm_counts(analysed) if len(analysed) else pd.DataFrame(columns=["n1", "n0"])
    both = (counts["n1"] > 0) & (counts["n0"] > 0)
    base = dict(
        intervention=intervention,
        outcome_measure=outcome_measure,
        uses_baseline=uses_baseline,
        schools=_distinct_schools(counts.index),
        schools_both_arms=_distinct_schools(counts.index[both.to_numpy(dtype=bool)]),
        pupils_randomised=int(cells["n"].sum()),
        pupils_analysed=int(analysed["n"].sum()),
        pupils_no_baseline=no_baseline,
        attrition=attrition_from_counts(_by_arm(cells), _by_arm(analysed)),
    )
    model_baseline = uses_baseline and _varies(with_base)
    covariates = [ARM] + ([BASELINE] if model_baseline else []) + (
        [BASELINE_MISSING] if model_baseline and no_baseline else []) + dummies
    notes = _design_notes(counts, base, model_baseline)
    if rounds:
        notes.insert(0, f"all {len(rounds)} rounds together ({', '.join(rounds)}): round as a fixed effect and "
                        "a random intercept and arm slope per school in each round")
    reason = _not_estimable(analysed, counts, base, len(covariates) + 1)
    per_school = _school_rows(counts)
    if reason:
        return TrialResult(**base, status=NOT_ESTIMABLE, reason=reason, per_school=per_school,
                           notes=(reason, *notes))
    fill = float(with_base["sum_b"].sum() / with_base["n"].sum()) if model_baseline else 0.0
    stats = reml.stats_from_cells(analysed, [INTERCEPT, *covariates], baseline_fill=fill)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        result = _estimate(base, stats, analysed, counts, covariates, dummies, fill, notes, model_baseline)
    return replace(result, notes=result.notes + tuple(_warning_notes(caught, stats)))


def _distinct_schools(units: pd.Index) -> int:
    """Schools among group labels: a school in two rounds (two school:round units) is one school."""
    return len({split_unit(u)[0] for u in units})


def _estimate(base: dict, stats: reml.SchoolStats, analysed: pd.DataFrame, counts: pd.DataFrame,
              covariates: list[str], dummies: list[str], fill: float, notes: list[str],
              model_baseline: bool) -> TrialResult:
    """Fit the models of an estimable trial and derive every figure (see ``analyse_cells``)."""
    models = _multisite(stats, covariates, "primary")
    unconditional = reml.fit_reml(stats, dummies)
    if dummies:
        unconditional = _school_round(unconditional)
    if models.headline is None:
        raise ModelFailure("neither the multisite nor the random-intercept model converged: " + "; ".join(models.notes))
    if not unconditional.converged:
        raise ModelFailure(f"the unconditional model did not converge ({unconditional.formula})")
    primary = models.headline
    notes = notes + list(models.notes) + _fit_notes("unconditional", unconditional)
    beta, se = primary.params[ARM], primary.bse[ARM]
    headline = hedges_g_total(beta, se, unconditional.var_school, unconditional.var_pupil)
    own_columns = [INTERCEPT, *(c for c in covariates if c not in dummies)]  # a round is constant within a unit
    per_school, pool, pool_notes = _heterogeneity(stats, counts, own_columns, headline.sd)
    spread, spread_notes = _spread(primary, headline, counts, base["schools_both_arms"])
    per_school = _shrunken(per_school, primary, headline)
    sensitivity = None
    if models.intercept is not None and models.intercept.converged:
        sensitivity = standardised_effect(models.intercept.params[ARM], models.intercept.bse[ARM], headline.sd)
    fsm_model, fsm, fsm_pupils, fsm_notes = _fsm_effect(analysed, covariates, fill, headline.sd)
    interaction = _interaction(analysed, covariates, fill)
    balance = _balance(analysed[analysed["has_baseline"].astype(bool)]) if model_baseline else None
    mdes_value = mdes(se, headline.sd)
    strength = evidence_strength(
        mdes_value, base["attrition"].overall, None if balance is None else balance.difference,
        base["schools_both_arms"],
    )
    return TrialResult(
        **base, primary=primary, unconditional=unconditional, random_slope=models.slope,
        random_intercept=models.intercept, sensitivity=sensitivity, model_choice=models.choice, spread=spread,
        interaction=interaction, fsm_model=fsm_model, headline=headline,
        within=hedges_g_within(beta, se, unconditional.var_pupil), p_value=wald_p_value(beta, se),
        fsm=fsm, fsm_pupils=fsm_pupils, pool=pool, per_school=per_school, balance=balance, mdes=mdes_value,
        strength=strength, notes=tuple(notes + spread_notes + pool_notes + fsm_notes + _interaction_notes(interaction)),
    )


def _varies(with_base: pd.DataFrame) -> bool:
    """Whether the analysed pupils' baseline scores vary at all (a constant baseline cannot adjust)."""
    n = float(with_base["n"].sum())
    if n < 2:
        return False
    sb, sbb = float(with_base["sum_b"].sum()), float(with_base["sum_bb"].sum())
    return sbb - sb * sb / n > 1e-10 * max(sbb, 1e-300)


def _not_estimable(analysed: pd.DataFrame, counts: pd.DataFrame, base: dict, p: int) -> str:
    """The plain reason a trial cannot be estimated, or "" when it can.

    Not estimable: no outcomes; one school; fewer than ``READY_MIN_SCHOOLS_BOTH_ARMS`` (2) schools
    with analysed pupils in both arms (one school's comparison is not a multi-school estimate);
    no more pupils than fixed effects; at most one pupil in every school's arm (nothing to measure
    within-school variation from); outcomes that do not vary within any school's arm.
    """
    n = base["pupils_analysed"]
    if n == 0:
        return "no pupil has an outcome score yet"
    if base["schools"] == 1:
        return "only one school has sent results so far"
    if base["schools_both_arms"] == 0:
        return "no school has analysed pupils in both arms, so intervention and control cannot be compared"
    if base["schools_both_arms"] < READY_MIN_SCHOOLS_BOTH_ARMS:
        return (f"only one school has analysed pupils in both arms; at least {READY_MIN_SCHOOLS_BOTH_ARMS} "
                "are needed for a multi-school estimate")
    if n <= p:
        return f"only {n} pupils analysed for {p} fixed effects: too few to estimate the effect"
    if bool(((counts["n1"] <= 1) & (counts["n0"] <= 1)).all()):  # no school:arm has 2 pupils to compare
        return ("too few pupils in each school's arms to measure how scores vary within schools: every school "
                "has at most one analysed pupil in each arm (at least 2 in an arm are needed)")
    if not _within_variation(analysed) > 1e-10 * float(analysed["sum_yy"].sum()):  # 0 up to rounding
        return "the outcome scores do not vary within schools (every pupil in a school's arm has the same score)"
    return ""


def _school_rows(counts: pd.DataFrame) -> pd.DataFrame:
    """One row per school with its arm counts and a note; the figures filled by ``_heterogeneity``."""
    frame = pd.DataFrame({
        "school_urn": counts.index.astype(str),
        "n_intervention": counts["n1"].to_numpy(dtype=int),
        "n_control": counts["n0"].to_numpy(dtype=int),
    })
    for column in ("g", "var", "ci_low", "ci_high", "eb_g"):
        frame[column] = np.nan
    frame["note"] = [_school_note(a, b) for a, b in zip(frame["n_intervention"], frame["n_control"])]
    return frame.sort_values("school_urn").reset_index(drop=True)[SCHOOL_FIELDS]


def _school_note(n1: int, n0: int) -> str:
    """Why a school has no own estimate, in plain words ("" when it may have one)."""
    if n0 == 0:
        return f"one arm only ({n1} pupil{'s' if n1 != 1 else ''} in intervention)"
    if n1 == 0:
        return f"one arm only ({n0} pupil{'s' if n0 != 1 else ''} in control)"
    if min(n1, n0) < MIN_PUPILS_PER_ARM or n1 + n0 < MIN_PUPILS_PER_SCHOOL_ESTIMATE:
        return (f"too few pupils for its own estimate ({n1} intervention, {n0} control; needs "
                f"{MIN_PUPILS_PER_ARM} in each arm and {MIN_PUPILS_PER_SCHOOL_ESTIMATE} in all)")
    return ""


def _heterogeneity(
    stats: reml.SchoolStats, counts: pd.DataFrame, columns: list[str], sd_total: float
) -> tuple[pd.DataFrame, TPool | None, list[str]]:
    """Each school "on its own": its own ANCOVA effect on the headline scale, and their two-stage pooling.

    Schools with at least 2 analysed pupils in each arm and 5 in all get d = beta_arm / SD_total
    and v = SE^2 / SD_total^2 from their own least-squares ``outcome ~ arm [+ baseline]``
    (``effect_sizes.school_ancova_effects``), a 95% CI d -/+ 1.96 sqrt(v). These are pooled by
    ``pooling.random_effects_reml_t`` as an evaluators' check only (stored, never published: with
    few pupils per school it overstates the variation between schools).
    """
    frame = _school_rows(counts).set_index("school_urn")
    XtX, Xty = stats.select(columns)
    d, v, _ = school_ancova_effects(XtX, Xty, stats.yty, stats.n, columns, sd_total)
    own = pd.DataFrame({"g": d, "var": v}, index=pd.Index(stats.schools.astype(str)))
    eligible = frame["note"] == ""
    frame.loc[eligible, "g"] = own["g"].reindex(frame.index[eligible])
    frame.loc[eligible, "var"] = own["var"].reindex(frame.index[eligible])
    flat = eligible & frame["g"].isna()
    frame.loc[flat, "note"] = "outcomes do not vary within this school: no estimate of its own"
    half = Z_975 * np.sqrt(frame["var"])
    frame["ci_low"], frame["ci_high"] = frame["g"] - half, frame["g"] + half
    pooled = frame.dropna(subset=["g", "var"])
    pool, notes = None, []
    if len(pooled) >= 2:
        pool = random_effects_reml_t(pooled["g"].to_numpy(), pooled["var"].to_numpy())
        if not pool.converged:
            notes.append("the two-stage check of the variation between schools (evaluators only) did not converge")
    return frame.reset_index()[SCHOOL_FIELDS], pool, notes


def _spread(fit: MixedFit, headline: EffectSize, counts: pd.DataFrame, k: int) -> tuple[MultisiteSpread, list[str]]:
    """tau, I2, the prediction interval and P(new school benefits) of the headline model (contract, section 2).

    tau = slope SD / total SD (0 for the random-intercept model); SE = the headline's SE on the same
    scale; k = schools with analysed pupils in both arms; I2 from each such school's sampling
    variance of its own effect under the model, sigma2 (1/n1 + 1/n0) / SD_total^2.
    """
    sd = headline.sd
    tau = (fit.sd_slope or 0.0) / sd
    se = fit.bse[ARM] / sd
    both = counts[(counts["n1"] > 0) & (counts["n0"] > 0)]
    school_vars = fit.var_pupil * (1.0 / both["n1"].to_numpy(float) + 1.0 / both["n0"].to_numpy(float)) / sd**2
    spread = multisite_spread(headline.g, se, tau, k, school_vars)
    notes = []
    if k < PI_MIN_SCHOOLS:
        notes.append(f"prediction interval left blank: only {k} schools have analysed pupils in both arms "
                     f"(needs {PI_MIN_SCHOOLS})")
    return spread, notes


def _shrunken(frame: pd.DataFrame, fit: MixedFit, headline: EffectSize) -> pd.DataFrame:
    """Each school's shrunken effect (``eb_g``): the headline plus its arm-slope BLUP / total SD.

    Given for schools with analysed pupils in both arms; with a random-intercept headline every
    slope BLUP is 0, so each school's shrunken effect is the headline.
    """
    frame = frame.copy()
    slope = fit.blups["arm"] if "arm" in fit.blups else pd.Series(0.0, index=fit.blups.index)
    slope.index = slope.index.astype(str)
    both = (frame["n_intervention"] > 0) & (frame["n_control"] > 0)
    frame.loc[both, "eb_g"] = headline.g + slope.reindex(frame.loc[both, "school_urn"]).fillna(0.0).to_numpy() / headline.sd
    return frame


@dataclass(frozen=True)
class Models:
    """The multisite model, the random-intercept model, which of them is the headline and why."""

    headline: MixedFit | None
    slope: MixedFit | None
    intercept: MixedFit | None
    choice: str
    notes: tuple[str, ...]


def _slope_at_zero(fit: MixedFit) -> bool:
    """The arm slope's variance is on the boundary: slope SD below 1e-4 pupil SDs (lme4's isSingular tolerance)."""
    return (fit.sd_slope or 0.0) < reml.SINGULAR_TOL * math.sqrt(fit.var_pupil)


def _multisite(stats: reml.SchoolStats, covariates: list[str], label: str) -> Models:
    """``(1 + arm | school)`` as the headline; ``(1 | school)`` when its slope variance is 0 or it fails.

    Both are fitted (the random-intercept fit is the evaluators' sensitivity figure). ``label`` names
    the model in the notes ("primary", "FSM-only").
    """
    slope, intercept = _optional(stats, covariates, random_slope=True), _optional(stats, covariates)
    if any(UNIT_SEP in str(label) for label in stats.schools):  # the groups are school:round units
        slope, intercept = (None if f is None else _school_round(f) for f in (slope, intercept))
    notes = [] if intercept is None or intercept.converged else [
        f"{label} random-intercept model (sensitivity) did not converge: its figure is not given"]
    if slope is not None and slope.converged and not _slope_at_zero(slope):
        return Models(slope, slope, intercept, "multisite: random intercept and arm slope per school",
                      tuple(notes + _fit_notes(label, slope)))
    if intercept is None or not intercept.converged:
        why = "could not be fitted" if slope is None else "did not converge" if not slope.converged else "is singular"
        return Models(None, slope, intercept, "", (f"{label} multisite model {why}", *notes))
    if slope is None or not slope.converged:
        choice = "random intercept: the multisite model did not converge"
        note = (f"{label} model: the multisite model (random arm slope) "
                f"{'could not be fitted' if slope is None else 'did not converge'}, so the random-intercept model is "
                "used; its interval can be too narrow if the effect varies between schools")
    else:
        choice = "random intercept: the arm slope's variance was estimated as 0"
        note = (f"{label} model: the effect's variation between schools was estimated as 0, so the model is the "
                "random-intercept model (tau 0)")
    return Models(intercept, slope, intercept, choice, (note, *notes, *_fit_notes(label, intercept)))


def _optional(stats: reml.SchoolStats, covariates: list[str], random_slope: bool = False) -> MixedFit | None:
    """A secondary model, or None when its data cannot identify it (e.g. no variation in a column)."""
    try:
        result = reml.fit_reml(stats, covariates, random_slope=random_slope)
    except (ValueError, np.linalg.LinAlgError, ArithmeticError, MicrotrialsError):
        return None
    return result if all(math.isfinite(v) for v in result.params.values()) else None


def _subset_covariates(cells: pd.DataFrame, covariates: list[str]) -> list[str]:
    """Drop the missing-baseline indicator where no pupil of these cells lacks a baseline, and a
    round dummy whose round has no pupil among them (or only them)."""
    if BASELINE_MISSING in covariates and cells["has_baseline"].astype(bool).all():
        covariates = [c for c in covariates if c != BASELINE_MISSING]
    n = cells["n"].to_numpy(dtype=float)
    keep = []
    for c in covariates:
        if c.startswith("round[") and c in cells:
            share = float((cells[c].to_numpy(dtype=float) * n).sum())
            if share == 0 or share == n.sum():
                continue
        keep.append(c)
    return keep


def _school_round(fit: MixedFit) -> MixedFit:
    """Say in the formula that the random intercept is per school within round."""
    from dataclasses import replace

    return replace(fit, formula=fit.formula.replace("(1 | school)", "(1 | school:round)")
                   .replace("(1 + arm | school)", "(1 + arm | school:round)"))


def _fsm_effect(
    analysed: pd.DataFrame, covariates: list[str], fill: float, sd_total: float
) -> tuple[MixedFit | None, EffectSize | None, int, list[str]]:
    """The primary model on FSM pupils only, standardised by the headline's total SD.

    Blank when fewer than 2 schools have FSM pupils in both arms or fewer than 30 FSM pupils
    are analysed (guidance.FSM_MIN_SCHOOLS_BOTH_ARMS, FSM_MIN_PUPILS).
    """
    fsm_cells = analysed[analysed["fsm"] == 1]
    pupils = int(fsm_cells["n"].sum())
    counts = _school_arm_counts(fsm_cells) if len(fsm_cells) else pd.DataFrame(columns=["n1", "n0"])
    schools = int(((counts["n1"] > 0) & (counts["n0"] > 0)).sum())
    if schools < FSM_MIN_SCHOOLS_BOTH_ARMS or pupils < FSM_MIN_PUPILS:
        return None, None, pupils, [
            f"FSM effect not estimated: {pupils} FSM pupils analysed in {schools} schools with both "
            f"arms (needs at least {FSM_MIN_PUPILS} pupils and {FSM_MIN_SCHOOLS_BOTH_ARMS} schools)"
        ]
    cov = _subset_covariates(fsm_cells, covariates)
    models = _multisite(reml.stats_from_cells(fsm_cells, [INTERCEPT, *cov], baseline_fill=fill), cov, "FSM-only")
    if models.headline is None:
        return None, None, pupils, ["FSM effect not estimated: the FSM-only model could not be fitted or did not "
                                    "converge", *models.notes]
    model = models.headline
    effect = standardised_effect(model.params[ARM], model.bse[ARM], sd_total)
    return model, effect, pupils, list(models.notes)


def _interaction(analysed: pd.DataFrame, covariates: list[str], fill: float) -> MixedFit | None:
    """``outcome ~ arm * fsm [+ baseline] + (1 | school)`` on pupils with known FSM (evaluators' model)."""
    known = analysed[analysed["fsm"].notna()]
    if known.empty:
        return None
    cov = [ARM, FSM, ARM_FSM] + _subset_covariates(known, covariates)[1:]
    return _optional(reml.stats_from_cells(known, [INTERCEPT, *cov], baseline_fill=fill), cov)


def _interaction_notes(fit: MixedFit | None) -> list[str]:
    """Say when the evaluators' arm x FSM model did not converge (it is never published)."""
    return [] if fit is None or fit.converged else ["arm x FSM model (evaluators only) did not converge"]


def _warning_notes(caught: list[warnings.WarningMessage], stats: reml.SchoolStats) -> list[str]:
    """Numerical warnings of a trial's fits as notes with their likely cause; other warnings go on.

    A LinAlgWarning or RuntimeWarning (overflow, division by zero, an ill-conditioned matrix) never
    reaches the officer's terminal: it is a note on that trial, once per message.
    """
    kinds: dict[str, int] = {}
    for w in caught:
        if not issubclass(w.category, RuntimeWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            continue
        kind = f"{w.category.__name__}: {str(w.message).split(':')[0].rstrip('. ')}"  # without the figures
        kinds[kind] = kinds.get(kind, 0) + 1
    if not kinds:
        return []
    said = "; ".join(f"{kind}{f' ({n} times)' if n > 1 else ''}" for kind, n in kinds.items())
    return [f"ill-conditioned fit ({said}): {reml.conditioning_cause(stats)}; check the figures"]


def _balance(with_base: pd.DataFrame) -> BaselineBalance | None:
    """Baseline balance between arms among analysed pupils with a baseline, from the cell sums."""
    g = with_base.groupby("arm")[["n", "sum_b", "sum_bb"]].sum()
    if not {0.0, 1.0} <= set(g.index) or (g["n"] < 2).any():
        return None
    mean = g["sum_b"] / g["n"]
    var = (g["sum_bb"] - g["n"] * mean**2) / (g["n"] - 1)
    return balance_from_summaries(g.loc[1.0, "n"], mean[1.0], var[1.0], g.loc[0.0, "n"], mean[0.0], var[0.0])


def _design_notes(counts: pd.DataFrame, base: dict, model_baseline: bool) -> list[str]:
    """Plain-English caveats about the design and the data."""
    notes = []
    one_arm = int(((counts["n1"] == 0) | (counts["n0"] == 0)).sum())
    if one_arm:
        notes.append(
            f"{one_arm} school{'s' if one_arm > 1 else ''} had only one arm "
            "(counted in schools and the one-stage model, not in the variation between schools)"
        )
    if base["pupils_no_baseline"]:
        n = base["pupils_no_baseline"]
        notes.append(f"{n} pupil{'s' if n != 1 else ''} with an outcome but no baseline score "
                     f"{'were' if n != 1 else 'was'} analysed with a missing-baseline indicator")
    if not model_baseline and base["uses_baseline"]:
        notes.append("the baseline scores do not vary: model not adjusted for prior attainment")
    elif not model_baseline:
        notes.append("no baseline scores: model not adjusted for prior attainment")
    return notes


def _fit_notes(label: str, fit: MixedFit) -> list[str]:
    """Say when a model is singular (school variance on the boundary) or did not converge."""
    notes = []
    if not fit.converged:
        notes.append(f"{label} model did not converge")
    if fit.singular and fit.var_slope is None:
        notes.append(f"{label} model is singular (school variance estimated as 0)")
    elif fit.singular:
        notes.append(f"{label} model is singular (school intercept and arm slope estimated as perfectly correlated, "
                     "or the school variance as 0)")
    return notes
