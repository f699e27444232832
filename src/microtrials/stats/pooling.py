"""Two-stage pooling: REML random-effects meta-analysis of per-school effect sizes, as metafor's rma."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

from microtrials.errors import MicrotrialsError

# metafor rma.uni control defaults (Viechtbauer 2010; metafor R/rma.uni.r): Fisher scoring stops
# when tau2 changes by at most 1e-5, after at most 100 iterations; 'tol' for the tau2 = 0 check.
REML_THRESHOLD = 1e-5
REML_MAXITER = 100
LL0_TOL = np.finfo(float).eps ** 0.25


@dataclass(frozen=True)
class Tau2Estimate:
    """A between-study variance estimate with its SE (from the Fisher information) and fitting record."""

    tau2: float
    se_tau2: float
    iterations: int
    converged: bool


@dataclass(frozen=True)
class HeterogeneityTest:
    """Cochran's Q test of homogeneity: Q on df = k - 1 degrees of freedom, p = P(chi2_df > Q)."""

    q: float
    df: int
    p_value: float


@dataclass(frozen=True)
class RandomEffectsPool:
    """A random-effects meta-analysis y_i = mu + u_i + e_i, u_i ~ N(0, tau2), e_i ~ N(0, v_i).

    ``mu``/``se``/``ci``/``p_value`` use the normal (z) test, as metafor's default;
    ``knha_*`` are the Knapp-Hartung versions (t on k - 1 df); ``pi_*`` the 95% prediction interval.
    """

    k: int
    mu: float
    se: float
    ci_low: float
    ci_high: float
    z: float
    p_value: float
    tau2: float
    se_tau2: float
    i2: float  # per cent
    h2: float
    q: float
    q_df: int
    q_p: float
    pi_low: float
    pi_high: float
    knha_se: float
    knha_ci_low: float
    knha_ci_high: float
    knha_p_value: float
    iterations: int
    converged: bool

    @property
    def tau(self) -> float:
        """SD of the true effects across studies (schools), sqrt(tau2)."""
        return math.sqrt(self.tau2)


def _as_arrays(yi: ArrayLike, vi: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Effect sizes and sampling variances as float arrays, checked for the model's requirements."""
    y, v = np.asarray(yi, dtype=float).ravel(), np.asarray(vi, dtype=float).ravel()
    if y.size == 0 or y.size != v.size:
        raise MicrotrialsError(
            f"pooling needs one sampling variance per effect size and at least one school; "
            f"got {y.size} effect sizes and {v.size} variances"
        )
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(v)) and np.all(v > 0)):
        raise MicrotrialsError("pooling needs finite effect sizes and positive sampling variances; drop the schools without them")
    return y, v


def weighted_mean(yi: np.ndarray, wi: np.ndarray) -> tuple[float, float]:
    """Inverse-variance weighted mean mu = sum(w y) / sum(w) and its SE 1 / sqrt(sum(w))."""
    sw = float(np.sum(wi))
    return float(np.sum(wi * yi) / sw), 1.0 / math.sqrt(sw)


def tau2_hedges(yi: ArrayLike, vi: ArrayLike) -> float:
    """Hedges (HE) method-of-moments estimator: tau2 = (RSS - tr(PV)) / (k - 1) = var(y) - mean(v).

    RSS is the unweighted residual sum of squares about the mean and tr(PV) = (k - 1) mean(v);
    not truncated at 0. Hedges (1983); metafor uses max(0, HE) to start the REML iterations.
    """
    y, v = _as_arrays(yi, vi)
    if y.size < 2:
        return 0.0
    return float(np.var(y, ddof=1) - np.mean(v))


def reml_loglik(yi: ArrayLike, vi: ArrayLike, tau2: float) -> float:
    """Restricted log-likelihood of the intercept-only random-effects model at tau2.

    l_R = -(k-1)/2 log(2 pi) - 1/2 sum log(v_i + tau2) - 1/2 log(sum w_i) - 1/2 sum w_i (y_i - mu_w)^2,
    w_i = 1 / (v_i + tau2) (Viechtbauer 2005; metafor's ll.REML without the REMLf constant).
    """
    y, v = _as_arrays(yi, vi)
    w = 1.0 / (v + tau2)
    mu, _ = weighted_mean(y, w)
    return float(
        -0.5 * (y.size - 1) * math.log(2 * math.pi) - 0.5 * np.sum(np.log(v + tau2))
        - 0.5 * math.log(np.sum(w)) - 0.5 * np.sum(w * (y - mu) ** 2)
    )


def tau2_reml(
    yi: ArrayLike,
    vi: ArrayLike,
    tau2_init: float | None = None,
    threshold: float = REML_THRESHOLD,
    maxiter: int = REML_MAXITER,
) -> Tau2Estimate:
    """REML estimate of tau2 by Fisher scoring, as metafor ``rma(method="REML")``.

    With W = diag(1 / (v_i + tau2)) and P = W - W 1 (1' W 1)^-1 1' W, each step is
    tau2 <- tau2 + (y' P P y - tr(P)) / tr(P P), halved while it would go below 0; start at
    max(0, HE estimate); stop when |change| <= 1e-5 or after 100 iterations. If the restricted
    likelihood at tau2 = 0 is higher (by more than eps^0.25) and tau2 > 1e-5, tau2 is set to 0.
    SE(tau2) = sqrt(2 / tr(P P)) from the Fisher information. Viechtbauer (2005), J. Educ. Behav.
    Stat. 30:261-293; Viechtbauer (2010) metafor, J. Stat. Softw. 36(3).
    """
    y, v = _as_arrays(yi, vi)
    k = y.size
    if k == 1:
        return Tau2Estimate(tau2=0.0, se_tau2=float("nan"), iterations=0, converged=True)
    tau2 = max(0.0, tau2_hedges(y, v)) if tau2_init is None else float(tau2_init)
    iterations, change = 0, threshold + 1
    while change > threshold:
        iterations += 1
        old = tau2
        py, tr_p, tr_pp = _projection_terms(y, v, tau2)
        adjust = (py @ py - tr_p) / tr_pp
        while tau2 + adjust < 0:  # step-halving keeps tau2 >= 0
            adjust /= 2
        tau2 = tau2 + adjust
        change = abs(old - tau2)
        if iterations > maxiter:
            return Tau2Estimate(tau2=float(tau2), se_tau2=float("nan"), iterations=iterations, converged=False)
    if tau2 > threshold and reml_loglik(y, v, 0.0) - reml_loglik(y, v, tau2) > LL0_TOL:
        tau2 = 0.0  # Fisher scoring stuck at a local maximum: metafor's ll0check
    _, _, tr_pp = _projection_terms(y, v, tau2)
    se_tau2 = math.sqrt(2.0 / tr_pp)
    return Tau2Estimate(tau2=float(max(tau2, 0.0)), se_tau2=se_tau2, iterations=iterations, converged=True)


def _projection_terms(y: np.ndarray, v: np.ndarray, tau2: float) -> tuple[np.ndarray, float, float]:
    """Py, tr(P) and tr(PP) for P = W - w w' / sum(w), W = diag(w), w = 1 / (v + tau2), in O(k).

    Py = w (y - mu_w); tr P = S1 - S2 / S1; tr PP = sum_ij P_ij^2 = S2 - 2 S3 / S1 + S2^2 / S1^2
    with S_m = sum w^m (P is never formed, so 20,000 schools need no k x k matrix).
    """
    w = 1.0 / (v + tau2)
    s1, s2, s3 = float(np.sum(w)), float(np.sum(w**2)), float(np.sum(w**3))
    py = w * (y - float(np.sum(w * y)) / s1)
    return py, s1 - s2 / s1, s2 - 2.0 * s3 / s1 + s2**2 / s1**2


def cochran_q(yi: ArrayLike, vi: ArrayLike) -> HeterogeneityTest:
    """Cochran's Q = sum w_i (y_i - mu_FE)^2 with w_i = 1 / v_i, on k - 1 df (Cochran 1954).

    p = P(chi2_{k-1} > Q); for k = 1, Q = 0 and p = 1 (as metafor).
    """
    y, v = _as_arrays(yi, vi)
    if y.size == 1:
        return HeterogeneityTest(q=0.0, df=0, p_value=1.0)
    w = 1.0 / v
    mu, _ = weighted_mean(y, w)
    q = max(0.0, float(np.sum(w * (y - mu) ** 2)))
    return HeterogeneityTest(q=q, df=y.size - 1, p_value=float(stats.chi2.sf(q, y.size - 1)))


def typical_variance(vi: ArrayLike) -> float:
    """The "typical" within-study variance s^2 = (k - 1) sum w / ((sum w)^2 - sum w^2), w = 1 / v.

    Equals (k - 1) / tr(P) with P the fixed-effect projection (Higgins & Thompson 2002, eq. 9;
    metafor's vt with i2def = "1").
    """
    v = np.asarray(vi, dtype=float)
    w = 1.0 / v
    return float((v.size - 1) * np.sum(w) / (np.sum(w) ** 2 - np.sum(w**2)))


def i2_statistic(tau2: float, vi: ArrayLike) -> float:
    """I^2 (%) = 100 tau2 / (tau2 + s^2), s^2 the typical within-study variance (metafor's definition).

    Higgins & Thompson (2002); Viechtbauer (2010). 0 when there is a single study.
    """
    if np.asarray(vi).size < 2:
        return 0.0
    return 100.0 * tau2 / (tau2 + typical_variance(vi))


def h2_statistic(tau2: float, vi: ArrayLike) -> float:
    """H^2 = (tau2 + s^2) / s^2, s^2 the typical within-study variance (metafor's definition)."""
    if np.asarray(vi).size < 2:
        return 1.0
    return tau2 / typical_variance(vi) + 1.0


def prediction_interval(mu: float, se: float, tau2: float, level: float = 0.95) -> tuple[float, float]:
    """Prediction interval for the true effect in a new study: mu -/+ z_{1-a/2} sqrt(se^2 + tau2).

    As metafor ``predict.rma`` under the default z test (Riley, Higgins & Deeks 2011 use t_{k-2}
    instead; we follow metafor).
    """
    half = stats.norm.ppf(0.5 + level / 2) * math.sqrt(se**2 + tau2)
    return mu - half, mu + half


def knapp_hartung(yi: ArrayLike, vi: ArrayLike, tau2: float, level: float = 0.95) -> tuple[float, float, float, float]:
    """Knapp-Hartung SE, CI and p-value: SE_KH = SE sqrt(q), q = sum w_i (y_i - mu)^2 / (k - 1), t on k - 1 df.

    w_i = 1 / (v_i + tau2). q is NOT truncated at 1 (metafor ``test="knha"``; ``"adhoc"`` would
    truncate). Knapp & Hartung (2003), Stat. Med. 22:2693-2710. Returns (se, ci_low, ci_high, p);
    NaN when k = 1.
    """
    y, v = _as_arrays(yi, vi)
    k = y.size
    if k < 2:
        nan = float("nan")
        return nan, nan, nan, nan
    w = 1.0 / (v + tau2)
    mu, se = weighted_mean(y, w)
    rss = float(np.sum(w * (y - mu) ** 2))
    s2w = 0.0 if rss <= np.finfo(float).eps else rss / (k - 1)
    se_kh = se * math.sqrt(s2w)
    crit = float(stats.t.ppf(0.5 + level / 2, k - 1))
    p = float(2 * stats.t.sf(abs(mu / se_kh), k - 1)) if se_kh > 0 else float("nan")
    return se_kh, mu - crit * se_kh, mu + crit * se_kh, p


def random_effects_reml(yi: ArrayLike, vi: ArrayLike, level: float = 0.95) -> RandomEffectsPool:
    """Random-effects meta-analysis by REML, as metafor ``rma(yi, vi, method="REML")``.

    mu = sum w_i y_i / sum w_i, SE = 1 / sqrt(sum w_i), w_i = 1 / (v_i + tau2), tau2 from
    ``tau2_reml``; CI mu -/+ z SE and p from z = mu / SE; Q, I^2, H^2, prediction interval and
    Knapp-Hartung CI as the functions of this module. Viechtbauer (2010), J. Stat. Softw. 36(3).
    """
    y, v = _as_arrays(yi, vi)
    fit = tau2_reml(y, v)
    mu, se = weighted_mean(y, 1.0 / (v + fit.tau2))
    zcrit = float(stats.norm.ppf(0.5 + level / 2))
    heterogeneity = cochran_q(y, v)
    pi_low, pi_high = prediction_interval(mu, se, fit.tau2, level)
    kh_se, kh_low, kh_high, kh_p = knapp_hartung(y, v, fit.tau2, level)
    return RandomEffectsPool(
        k=int(y.size),
        mu=mu,
        se=se,
        ci_low=mu - zcrit * se,
        ci_high=mu + zcrit * se,
        z=mu / se,
        p_value=float(2 * stats.norm.sf(abs(mu / se))),
        tau2=fit.tau2,
        se_tau2=fit.se_tau2,
        i2=i2_statistic(fit.tau2, v),
        h2=h2_statistic(fit.tau2, v),
        q=heterogeneity.q,
        q_df=heterogeneity.df,
        q_p=heterogeneity.p_value,
        pi_low=pi_low,
        pi_high=pi_high,
        knha_se=kh_se,
        knha_ci_low=kh_low,
        knha_ci_high=kh_high,
        knha_p_value=kh_p,
        iterations=fit.iterations,
        converged=fit.converged,
    )


def pool_schools(per_school: pd.DataFrame, level: float = 0.95) -> RandomEffectsPool:
    """REML pooling of a per-school table from ``effect_sizes.school_hedges_g`` (columns g, var)."""
    return random_effects_reml(per_school["g"].to_numpy(), per_school["var"].to_numpy(), level)


@dataclass(frozen=True)
class TPool:
    """REML random-effects pooling with t-based inference on k - 1 df, as metafor
    ``rma(yi, vi, method="REML", test="t")`` and ``predict``/``blup`` of that fit.

    ``ci_*``: mu -/+ t_{k-1} SE; ``pi_*``: mu -/+ t_{k-1} sqrt(tau2 + SE^2) (NaN when k < 3,
    see ``PI_MIN_SCHOOLS``); ``p_new_positive`` = P(true effect in a new school > 0) =
    F_{t, k-1}(mu / sqrt(tau2 + SE^2)); ``blup`` each study's empirical-Bayes estimate.
    """

    k: int
    mu: float
    se: float
    df: int
    ci_low: float
    ci_high: float
    p_value: float
    tau2: float
    i2: float
    q: float
    q_p: float
    pi_low: float
    pi_high: float
    p_new_positive: float
    blup: np.ndarray
    converged: bool

    @property
    def tau(self) -> float:
        """SD of the true effects across schools, sqrt(tau2)."""
        return math.sqrt(max(self.tau2, 0.0))


# A prediction interval on k - 1 = 1 df (two schools) spans most of the real line: left blank.
PI_MIN_SCHOOLS = 3


def empirical_bayes(yi: ArrayLike, vi: ArrayLike, mu: float, tau2: float) -> np.ndarray:
    """Empirical-Bayes (BLUP) estimates: mu + lambda_i (y_i - mu), lambda_i = tau2 / (tau2 + v_i).

    Each lies between the study's own estimate and mu (0 <= lambda_i < 1). metafor ``blup.rma.uni``;
    Raudenbush & Bryk (2002) ch. 3.
    """
    y, v = _as_arrays(yi, vi)
    return mu + tau2 / (tau2 + v) * (y - mu)


def random_effects_reml_t(yi: ArrayLike, vi: ArrayLike, level: float = 0.95) -> TPool:
    """REML random-effects pooling with t inference: metafor ``rma(method="REML", test="t")``.

    tau2 by ``tau2_reml``; mu = sum w y / sum w and SE = 1 / sqrt(sum w), w = 1 / (v + tau2) (the SE is
    not rescaled: test="t" is not Knapp-Hartung); CI and p from t on k - 1 df; I^2 as
    ``i2_statistic``; prediction interval mu -/+ t_{k-1, 0.975} sqrt(tau2 + SE^2) (metafor
    ``predict``; Higgins, Thompson & Spiegelhalter 2009 use k - 2 df) and P(new effect > 0) from the
    same predictive t distribution; empirical-Bayes estimates by ``empirical_bayes``.
    """
    y, v = _as_arrays(yi, vi)
    k = int(y.size)
    if k < 2:
        raise MicrotrialsError("t-based pooling needs at least 2 schools with an estimate")
    fit = tau2_reml(y, v)
    mu, se = weighted_mean(y, 1.0 / (v + fit.tau2))
    df = k - 1
    crit = float(stats.t.ppf(0.5 + level / 2, df))
    heterogeneity = cochran_q(y, v)
    sd_new = math.sqrt(fit.tau2 + se**2)
    nan = float("nan")
    pi = (mu - crit * sd_new, mu + crit * sd_new) if k >= PI_MIN_SCHOOLS else (nan, nan)
    return TPool(
        k=k, mu=mu, se=se, df=df, ci_low=mu - crit * se, ci_high=mu + crit * se,
        p_value=float(2 * stats.t.sf(abs(mu / se), df)), tau2=fit.tau2, i2=i2_statistic(fit.tau2, v),
        q=heterogeneity.q, q_p=heterogeneity.p_value, pi_low=pi[0], pi_high=pi[1],
        p_new_positive=float(stats.t.cdf(mu / sd_new, df)) if k >= PI_MIN_SCHOOLS else nan,
        blup=empirical_bayes(y, v, mu, fit.tau2), converged=fit.converged,
    )


@dataclass(frozen=True)
class MultisiteSpread:
    """How the effect varies between schools, from the multisite model, on the effect_size scale.

    ``tau`` = the arm slope's SD / the total SD; ``pi_*`` = g -/+ t_{k-1, 0.975} sqrt(SE^2 + tau^2)
    and ``p_new_positive`` = F_{t, k-1}(g / sqrt(SE^2 + tau^2)) (NaN when k < ``PI_MIN_SCHOOLS``);
    ``i2`` = 100 tau^2 / (tau^2 + s^2), s^2 the typical sampling variance of a school's own effect
    under the model (``typical_variance`` of sigma2 (1/n1 + 1/n0) / SD_total^2 per school).
    """

    k: int
    df: int
    tau: float
    i2: float
    pi_low: float
    pi_high: float
    p_new_positive: float


def multisite_spread(g: float, se: float, tau: float, k: int, school_vars: ArrayLike,
                     level: float = 0.95) -> MultisiteSpread:
    """The prediction interval, P(new school benefits) and I^2 of the multisite model (contract, section 2).

    ``g``, ``se``: the headline effect size and its SE; ``tau``: the slope SD over the same total SD;
    ``k``: schools with analysed pupils in both arms (df = k - 1, as metafor ``predict`` after a
    t-based ``rma``; Higgins, Thompson & Spiegelhalter 2009); ``school_vars``: each such school's
    sampling variance of its own arm effect under the model, on the same scale (for I^2).
    """
    nan = float("nan")
    df = max(k - 1, 0)
    sd_new = math.sqrt(se**2 + tau**2)
    v = np.asarray(school_vars, dtype=float)
    i2 = 100.0 * tau**2 / (tau**2 + typical_variance(v)) if v.size >= 2 else nan
    if k < PI_MIN_SCHOOLS:
        return MultisiteSpread(k=k, df=df, tau=tau, i2=i2, pi_low=nan, pi_high=nan, p_new_positive=nan)
    crit = float(stats.t.ppf(0.5 + level / 2, df))
    return MultisiteSpread(k=k, df=df, tau=tau, i2=i2, pi_low=g - crit * sd_new, pi_high=g + crit * sd_new,
                           p_new_positive=float(stats.t.cdf(g / sd_new, df)))
