"""How secure a finding is: MDES, baseline balance, attrition and the 0-5 evidence strength."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from microtrials.errors import MicrotrialsError
from microtrials.guidance import (
    ATTRITION_RATINGS,
    DESIGN_RATING_RANDOMISED_WITHIN_SCHOOL,
    IMBALANCE_DEDUCTION_SD,
    MDES_ALPHA,
    MDES_POWER,
    MDES_RATINGS,
    MIN_SCHOOLS_BOTH_ARMS,
    WWC_BALANCE_ADJUST,
    WWC_BALANCE_FINE,
)

BALANCE_FINE = "fine"
BALANCE_ADJUSTED = "needs statistical adjustment (made: baseline is in the model)"
BALANCE_NOT_COMPARABLE = "not comparable"


@dataclass(frozen=True)
class BaselineBalance:
    """Baseline difference between arms in SD units (intervention minus control) and its WWC flag."""

    difference: float  # Hedges' g of the baseline scores
    mean_intervention: float
    mean_control: float
    sd_pooled: float
    n_intervention: int
    n_control: int
    flag: str


@dataclass(frozen=True)
class Attrition:
    """Attrition in per cent of randomised pupils, overall and by arm; differential = |intervention - control|."""

    overall: float
    intervention: float
    control: float

    @property
    def differential(self) -> float:
        """Absolute difference between the arms' attrition rates (percentage points), as the WWC uses."""
        return abs(self.intervention - self.control)


@dataclass(frozen=True)
class EvidenceStrength:
    """The 0-5 evidence strength and, in plain English, the rules that set it."""

    score: int
    reasons: tuple[str, ...]


def mdes(
    se_beta: float,
    sd_total: float,
    df: float | None = None,
    alpha: float = MDES_ALPHA,
    power: float = MDES_POWER,
) -> float:
    """Minimum detectable effect size: MDES = (t_{1-alpha/2, df} + t_{power, df}) SE(beta) / sd_total.

    ``se_beta`` is the primary model's SE of the arm coefficient (it already reflects the ICC,
    the covariate R^2 and the sample actually analysed); ``sd_total`` the unconditional total SD
    used for the effect size, so the MDES is on the effect-size scale. ``df=None`` uses normal
    quantiles: the multiplier is 1.960 + 0.842 = 2.802 for 5% two-sided and 80% power.
    Bloom (1995), Evaluation Review 19:547-556; Dong & Maynard (2013), PowerUp!, J. Res. Educ.
    Eff. 6:24-67; EEF Statistical analysis guidance (2022), post-hoc MDES from the analysed sample.
    """
    if df is None:
        multiplier = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    else:
        multiplier = stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)
    return float(multiplier * se_beta / sd_total)


def wwc_balance_flag(difference: float) -> str:
    """The WWC baseline-equivalence category of a baseline difference in SD units.

    |d| <= 0.05: "fine"; 0.05 < |d| <= 0.25: "needs statistical adjustment (made: baseline is in
    the model)"; |d| > 0.25: "not comparable". WWC Procedures and Standards Handbook v5.0 (2022).
    """
    size = abs(difference)
    if size <= WWC_BALANCE_FINE:
        return BALANCE_FINE
    if size <= WWC_BALANCE_ADJUST:
        return BALANCE_ADJUSTED
    return BALANCE_NOT_COMPARABLE


def baseline_balance(pupils: pd.DataFrame) -> BaselineBalance:
    """Baseline difference between arms among analysed pupils, as the WWC's Hedges' g.

    d = omega (mean_I - mean_C) / s_pooled, s_pooled^2 = ((n_I - 1) s_I^2 + (n_C - 1) s_C^2) / (n_I + n_C - 2)
    (pooled within-arm SD of the baseline), omega = 1 - 3 / (4 N - 9), N = n_I + n_C. Pupils of all
    schools are pooled (no school adjustment), as the WWC does. ``pupils``: columns ``arm``
    (1/0) and ``baseline``; rows without a baseline are ignored. WWC Procedures and Standards
    Handbook v5.0 (2022), baseline equivalence and appendix on effect sizes; Hedges (1981).
    """
    scores = pupils.dropna(subset=["baseline"])
    stats_by_arm = scores.groupby("arm")["baseline"].agg(["count", "mean", "var"])
    if not {0, 1} <= set(stats_by_arm.index) or (stats_by_arm["count"] < 2).any():
        raise MicrotrialsError("baseline balance needs at least 2 pupils with a baseline score in each arm; check the trial's baseline column")
    n1, m1, v1 = stats_by_arm.loc[1]
    n0, m0, v0 = stats_by_arm.loc[0]
    return balance_from_summaries(n1, m1, v1, n0, m0, v0)


def balance_from_summaries(n1: float, m1: float, v1: float, n0: float, m0: float, v0: float) -> BaselineBalance:
    """:func:`baseline_balance` from each arm's count, mean and variance (ddof 1) of the baseline."""
    if n1 < 2 or n0 < 2:
        raise MicrotrialsError("baseline balance needs at least 2 pupils with a baseline score in each arm; check the trial's baseline column")
    n = n1 + n0
    sd_pooled = math.sqrt(max(((n1 - 1) * v1 + (n0 - 1) * v0) / (n - 2), 0.0))
    omega = 1 - 3 / (4 * n - 9)
    difference = omega * (m1 - m0) / sd_pooled if sd_pooled > 0 else 0.0
    return BaselineBalance(
        difference=float(difference),
        mean_intervention=float(m1),
        mean_control=float(m0),
        sd_pooled=sd_pooled,
        n_intervention=int(n1),
        n_control=int(n0),
        flag=wwc_balance_flag(difference),
    )


def attrition_pct(randomised: int, analysed: int) -> float:
    """Attrition in per cent: 100 (randomised - analysed) / randomised (EEF guidance 2022; WWC v5.0)."""
    if randomised <= 0:
        return float("nan")
    return 100.0 * (randomised - analysed) / randomised


def attrition_by_arm(randomised_arm: pd.Series, analysed_arm: pd.Series) -> Attrition:
    """Attrition overall and in each arm from the arm codes (1/0) of randomised and analysed pupils."""
    rand = np.asarray(randomised_arm)
    done = np.asarray(analysed_arm)
    return Attrition(
        overall=attrition_pct(rand.size, done.size),
        intervention=attrition_pct(int(np.sum(rand == 1)), int(np.sum(done == 1))),
        control=attrition_pct(int(np.sum(rand == 0)), int(np.sum(done == 0))),
    )


def attrition_from_counts(randomised: tuple[int, int], analysed: tuple[int, int]) -> Attrition:
    """Attrition overall and by arm from (intervention, control) counts of randomised and analysed pupils."""
    return Attrition(
        overall=attrition_pct(sum(randomised), sum(analysed)),
        intervention=attrition_pct(randomised[0], analysed[0]),
        control=attrition_pct(randomised[1], analysed[1]),
    )


def _banded(value: float, bands: tuple[tuple[float, int], ...]) -> int:
    """The rating of the first band whose upper limit is >= value; 0 above the last band or for NaN."""
    if value is None or not math.isfinite(value):
        return 0
    for upper, rating in bands:
        if value <= upper:
            return rating
    return 0


def mdes_rating(value: float) -> int:
    """EEF padlock rating for the MDES: <= 0.2 -> 5, <= 0.3 -> 4, <= 0.4 -> 3, <= 0.5 -> 2, <= 0.6 -> 1, else 0."""
    return _banded(value, MDES_RATINGS)


def attrition_rating(pct: float) -> int:
    """EEF padlock rating for attrition (%): <= 10 -> 5, <= 20 -> 4, <= 30 -> 3, <= 40 -> 2, <= 50 -> 1, else 0."""
    return _banded(pct, ATTRITION_RATINGS)


def evidence_strength(
    mdes_value: float | None,
    attrition: float | None,
    baseline_difference: float | None,
    schools_both_arms: int,
    design_rating: int = DESIGN_RATING_RANDOMISED_WITHIN_SCHOOL,
) -> EvidenceStrength:
    """Evidence strength 0-5: min(design, MDES, attrition ratings) - deductions, floored at 0.

    Ratings follow the EEF padlocks (EEF, "Classifying the security of EEF findings"):
    design 5 for pupils randomised within schools; MDES <= 0.2 -> 5 ... <= 0.6 -> 1, else 0;
    attrition <= 10% -> 5 ... <= 50% -> 1, else 0. Deductions (project rule): -1 when
    |baseline difference| > 0.05 SD (the WWC "fine" limit), -1 when fewer than 5 schools have
    analysed pupils in both arms. ``baseline_difference`` None (no baseline) deducts nothing.
    """
    mdes_value = float("nan") if mdes_value is None else float(mdes_value)
    attrition = float("nan") if attrition is None else float(attrition)
    ratings = {
        "the design": (design_rating, "design: pupils randomised within schools" if design_rating == DESIGN_RATING_RANDOMISED_WITHIN_SCHOOL else "design"),
        "the MDES": (mdes_rating(mdes_value), f"MDES {mdes_value:.2f} SD" if math.isfinite(mdes_value) else "MDES could not be computed"),
        "attrition": (attrition_rating(attrition), f"attrition {attrition:.1f}%" if math.isfinite(attrition) else "attrition unknown"),
    }
    start = min(rating for rating, _ in ratings.values())
    setters = [name for name, (rating, _) in ratings.items() if rating == start]
    parts = ", ".join(f"{text} -> {rating}" for rating, text in ratings.values())
    set_by = setters[0] if len(setters) == 1 else ", ".join(setters[:-1]) + " and " + setters[-1]
    reasons = [f"{start} of 5 before deductions, the lowest of ({parts}); set by {set_by}"]
    score = start
    if baseline_difference is None or not math.isfinite(baseline_difference):
        reasons.append("no baseline scores, so balance between arms could not be checked")
    elif abs(baseline_difference) > IMBALANCE_DEDUCTION_SD:
        score -= 1
        reasons.append(
            f"-1: the arms differed at baseline by {abs(baseline_difference):.3f} SD (more than {IMBALANCE_DEDUCTION_SD} SD)"
        )
    if schools_both_arms < MIN_SCHOOLS_BOTH_ARMS:
        score -= 1
        reasons.append(
            f"-1: only {schools_both_arms} school{'s' if schools_both_arms != 1 else ''} had pupils in both arms "
            f"(fewer than {MIN_SCHOOLS_BOTH_ARMS})"
        )
    if score < 0:
        score = 0
        reasons.append("floored at 0")
    return EvidenceStrength(score=int(score), reasons=tuple(reasons))
