"""Effect sizes: Hedges' g from a mixed model (total / within), per-school g, months of progress."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pandas as pd
from scipy import special, stats

from microtrials.guidance import MIN_PUPILS_PER_ARM, MONTHS_MAX, MONTHS_TABLE, Z_975


@dataclass(frozen=True)
class EffectSize:
    """A standardised effect g = beta / sd with its 95% CI (beta +/- 1.96 SE) / sd."""

    g: float
    ci_low: float
    ci_high: float
    sd: float  # the standardiser

    @property
    def months_progress(self) -> int | None:
        """The EEF conversion of ``g`` to months of additional progress."""
        return months_progress(self.g)


def months_progress(g: float) -> int | None:
    """Months of additional progress for an effect size, by the EEF Toolkit table.

    g is rounded to 2 decimals (half away from zero) and looked up in ``guidance.MONTHS_TABLE``:
    -0.01..0.01 -> 0, 0.02..0.09 -> 1, 0.10..0.18 -> 2, ..., 0.88..0.95 -> 11, 0.96+ -> 12;
    negative effects mirror (-0.05 -> -1). NaN or None gives None.
    Source: EEF Teaching and Learning Toolkit conversion table (EEF evaluation reports; EEF
    Statistical analysis guidance 2022).
    """
    if g is None or not math.isfinite(float(g)):
        return None
    rounded = Decimal(repr(abs(float(g)))).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    months = MONTHS_MAX
    for upper, band in MONTHS_TABLE:
        if rounded <= Decimal(repr(upper)):
            months = band
            break
    return -months if g < 0 else months


def standardised_effect(beta: float, se: float, sd: float, z: float = Z_975) -> EffectSize:
    """g = beta / sd, 95% CI = (beta -/+ z SE) / sd (Wald interval of the coefficient, rescaled).

    EEF Statistical analysis guidance (2022); eefAnalytics ``mstFREQ``/``crtFREQ``, which
    standardise the CI of the arm coefficient by the same SD.
    """
    return EffectSize(g=beta / sd, ci_low=(beta - z * se) / sd, ci_high=(beta + z * se) / sd, sd=sd)


def hedges_g_total(beta: float, se: float, var_school: float, var_pupil: float) -> EffectSize:
    """Total-variance effect size: g = beta / sqrt(var_school + var_pupil).

    ``beta``, ``se``: the arm coefficient and its SE from the primary model
    ``outcome ~ arm [+ baseline] + (1 | school)``; ``var_school``, ``var_pupil``: variance components
    of the UNCONDITIONAL model ``outcome ~ 1 + (1 | school)`` on the same pupils. This is
    eefAnalytics ``mstFREQ``'s "Total" under "Unconditional" and the EEF Statistical analysis
    guidance (2022) headline effect size (Hedges 2007, for multilevel designs).
    """
    return standardised_effect(beta, se, math.sqrt(var_school + var_pupil))


def hedges_g_within(beta: float, se: float, var_pupil: float) -> EffectSize:
    """Within-school effect size: g = beta / sqrt(var_pupil), var_pupil from the UNCONDITIONAL model.

    As eefAnalytics ``mstFREQ``'s "Within" under "Unconditional". Checked on the reference data:
    3.35914 / sqrt(193.0615) = 0.24176 (expected.json g_within), whereas the conditional pupil
    variance 132.449 would give 0.2919.
    """
    return standardised_effect(beta, se, math.sqrt(var_pupil))


def wald_p_value(beta: float, se: float) -> float:
    """Two-sided p-value for a coefficient from the Wald z statistic: 2 * (1 - Phi(|beta / SE|)).

    A normal reference distribution (no Satterthwaite/Kenward-Roger degrees of freedom); with
    hundreds of pupils and tens of schools the difference from a t reference is small.
    """
    return float(2.0 * stats.norm.sf(abs(beta / se)))


def small_sample_correction(df: np.ndarray | float) -> np.ndarray:
    """Hedges' exact correction J(m) = Gamma(m/2) / (sqrt(m/2) Gamma((m-1)/2)), m = n1 + n2 - 2.

    Hedges (1981), eq. 6e; metafor ``escalc`` uses this exact form (approx. 1 - 3/(4m - 1)).
    """
    m = np.asarray(df, dtype=float)
    return np.exp(special.gammaln(m / 2) - 0.5 * np.log(m / 2) - special.gammaln((m - 1) / 2))


def hedges_g(
    mean1: np.ndarray, mean2: np.ndarray, sd1: np.ndarray, sd2: np.ndarray, n1: np.ndarray, n2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Hedges' g and its large-sample variance, as metafor ``escalc(measure="SMD", vtype="LS")``.

    g = J(n1 + n2 - 2) (mean1 - mean2) / s_pooled, s_pooled^2 = ((n1-1) sd1^2 + (n2-1) sd2^2) / (n1 + n2 - 2);
    v = (n1 + n2) / (n1 n2) + g^2 / (2 (n1 + n2)). Hedges (1981); Borenstein et al. (2009) ch. 4.
    Vectorised: each argument may be an array (one element per school).
    """
    n1, n2 = np.asarray(n1, dtype=float), np.asarray(n2, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):  # s_pooled = 0 gives a non-finite g
        s_pooled = np.sqrt(((n1 - 1) * np.square(sd1) + (n2 - 1) * np.square(sd2)) / (n1 + n2 - 2))
        g = small_sample_correction(n1 + n2 - 2) * (np.asarray(mean1) - np.asarray(mean2)) / s_pooled
        var = (n1 + n2) / (n1 * n2) + np.square(g) / (2 * (n1 + n2))
    return g, var


def school_hedges_g(pupils: pd.DataFrame, z: float = Z_975) -> pd.DataFrame:
    """Per-school Hedges' g (intervention minus control, unadjusted for baseline) with variance and 95% CI.

    ``pupils`` are the analysed pupils (those in the primary model): columns ``school_urn``,
    ``arm`` (1 = intervention, 0 = control) and ``outcome``. Returns one row per school with at
    least ``MIN_PUPILS_PER_ARM`` (2) pupils in each arm: school_urn, n_intervention, n_control,
    g, var, ci_low, ci_high (g -/+ 1.96 sqrt(var)), sorted by school_urn. Matches metafor
    ``escalc(measure="SMD")`` (see ``hedges_g``). A school whose outcomes do not vary within
    either arm (pooled SD 0, so g undefined) is left out.
    """
    summary = (
        pupils.dropna(subset=["outcome"])
        .groupby(["school_urn", "arm"])["outcome"]
        .agg(["count", "mean", "std"])
        .unstack("arm")
    )
    columns = ["school_urn", "n_intervention", "n_control", "g", "var", "ci_low", "ci_high"]
    arms = set(summary.columns.get_level_values("arm")) if not summary.empty else set()
    if not {0, 1} <= arms:
        return pd.DataFrame({c: pd.Series(dtype=object if c == "school_urn" else float) for c in columns})
    summary = summary[(summary[("count", 1)] >= MIN_PUPILS_PER_ARM) & (summary[("count", 0)] >= MIN_PUPILS_PER_ARM)]
    n1, n0 = summary[("count", 1)].to_numpy(float), summary[("count", 0)].to_numpy(float)
    g, var = hedges_g(
        summary[("mean", 1)].to_numpy(), summary[("mean", 0)].to_numpy(),
        summary[("std", 1)].to_numpy(), summary[("std", 0)].to_numpy(), n1, n0,
    )
    half = z * np.sqrt(var)
    out = pd.DataFrame({
        "school_urn": summary.index.astype(str),
        "n_intervention": n1.astype(int),
        "n_control": n0.astype(int),
        "g": g,
        "var": var,
        "ci_low": g - half,
        "ci_high": g + half,
    })
    out = out[np.isfinite(out["g"]) & np.isfinite(out["var"])]
    return out.sort_values("school_urn").reset_index(drop=True)


def _identifiable(XtX: np.ndarray, order: list[int], tol: float = 1e-9) -> list[int]:
    """The columns of ``order`` kept greedily while each adds information: a column is dropped
    when its residual sum of squares after the columns already kept is below ``tol`` x its own."""
    kept: list[int] = []
    for i in order:
        trial = kept + [i]
        sub = XtX[np.ix_(trial, trial)]
        if not kept:
            ok = sub[0, 0] > 0
        else:
            a = XtX[np.ix_(kept, kept)]
            b = XtX[np.ix_(kept, [i])]
            try:
                resid = float(sub[-1, -1] - (b.T @ np.linalg.solve(a, b))[0, 0])
            except np.linalg.LinAlgError:
                resid = 0.0
            ok = resid > tol * max(float(sub[-1, -1]), 1e-300)
        if ok:
            kept.append(i)
    return kept


def school_ancova_effects(
    XtX: np.ndarray, Xty: np.ndarray, yty: np.ndarray, n: np.ndarray, columns: list[str], sd_total: float,
    arm: str = "arm",
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, ...]]]:
    """Each school's own least-squares ANCOVA arm effect on the total-SD scale, from its sums.

    Per school: beta = (X'X)^-1 X'y over ``columns`` (e.g. [1, arm, baseline]),
    s2 = (y'y - beta'X'y) / (n - p), SE(beta_arm) = sqrt(s2 [(X'X)^-1]_arm,arm); then
    d = beta_arm / sd_total and v = SE^2 / sd_total^2 (as ``lm(outcome ~ arm + baseline)`` in that
    school, divided by the trial's total SD). Columns the school cannot identify (baseline constant
    within the school, a missing-baseline indicator that is all 0 or all 1) are dropped for that
    school; the arm column is never dropped. Returns (d, v, the columns used per school); d and v
    are NaN when the arm is not identifiable or the residual variance is 0.
    """
    J = len(n)
    d, v = np.full(J, np.nan), np.full(J, np.nan)
    used: list[tuple[str, ...]] = []
    a = columns.index(arm)
    for j in range(J):
        kept = _identifiable(XtX[j], list(range(len(columns))))
        used.append(tuple(columns[i] for i in kept))
        p = len(kept)
        if a not in kept or n[j] <= p:
            continue
        A, b = XtX[j][np.ix_(kept, kept)], Xty[j][kept]
        inv = np.linalg.inv(A)
        beta = inv @ b
        rss = float(yty[j] - beta @ b)
        if not rss > 1e-12 * max(float(yty[j]), 1e-300):
            continue
        k = kept.index(a)
        d[j] = beta[k] / sd_total
        v[j] = rss / (n[j] - p) * inv[k, k] / sd_total**2
    return d, v, used
