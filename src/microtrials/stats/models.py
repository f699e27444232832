"""Multilevel model fits: the result type shared by every fitter, and the statsmodels MixedLM path."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# Names of the fixed effects, shared by every fitter so results can be compared by name.
INTERCEPT, ARM, BASELINE, FSM, ARM_FSM = "Intercept", "arm", "baseline", "fsm", "arm:fsm"
# 1 for a pupil analysed without a baseline score (missing-indicator method), else 0.
BASELINE_MISSING = "baseline_missing"


@dataclass(frozen=True)
class MixedFit:
    """A linear mixed model fitted by REML: y = X beta + Z_school u_school + e.

    Random effects per school are an intercept (variance ``var_school``) and, for the
    random-slope model, an arm slope (variance ``var_slope``, covariance ``cov_school_slope``);
    pupil residuals have variance ``var_pupil``. ``cov_params`` is the covariance of the fixed
    effects conditional on the variance parameters, (X' V^-1 X)^-1, as lme4's ``vcov`` reports.
    """

    formula: str
    params: dict[str, float]
    cov_params: pd.DataFrame
    var_school: float
    var_pupil: float
    loglik_reml: float
    converged: bool
    singular: bool
    n_obs: int
    n_groups: int
    var_slope: float | None = None
    cov_school_slope: float | None = None
    blups: pd.DataFrame = field(default_factory=pd.DataFrame)  # index school_urn; columns intercept[, arm]
    method: str = "statsmodels MixedLM"
    messages: tuple[str, ...] = ()
    theta: tuple[float, ...] = ()  # lme4's theta: Cholesky factor of the random-effects covariance / sigma2

    @property
    def bse(self) -> dict[str, float]:
        """Standard errors of the fixed effects: sqrt of the diagonal of ``cov_params``."""
        return {k: float(np.sqrt(self.cov_params.loc[k, k])) for k in self.params}

    @property
    def icc(self) -> float:
        """Intra-class correlation: var_school / (var_school + var_pupil)."""
        return self.var_school / (self.var_school + self.var_pupil)

    @property
    def sd_slope(self) -> float | None:
        """SD of the arm effect across schools, sqrt(var_slope)."""
        return None if self.var_slope is None else float(np.sqrt(max(self.var_slope, 0.0)))


def design_formula(covariates: list[str]) -> str:
    """The fixed-effects part as an R-style formula, e.g. ``outcome ~ arm + baseline``."""
    return "outcome ~ " + (" + ".join(covariates) if covariates else "1")


def fit_mixedlm(
    data: pd.DataFrame,
    covariates: list[str],
    random_slope: bool = False,
) -> MixedFit:
    """Fit ``outcome ~ covariates + (1 | school)`` (or ``(1 + arm | school)``) by REML with statsmodels.

    ``data`` has columns ``school_urn``, ``outcome`` and each covariate (``arm`` coded 1 =
    intervention, 0 = control; ``arm:fsm`` may be given as a covariate and is built here).
    Tries lbfgs, then powell/nm, and records which optimiser converged in ``messages``.
    """
    frame = data.copy()
    terms = []
    for c in covariates:
        if c == ARM_FSM:
            frame["arm_x_fsm"] = frame[ARM] * frame[FSM]
            terms.append("arm_x_fsm")
        else:
            terms.append(c)
    formula = design_formula(terms)
    re_formula = "~arm" if random_slope else "~1"
    import statsmodels.formula.api as smf  # here: the pipeline's REML never needs statsmodels (a second of import)

    model = smf.mixedlm(formula, frame, groups=frame["school_urn"], re_formula=re_formula)
    messages: list[str] = []
    result, converged = None, False
    for method in ("lbfgs", "bfgs", "powell", "nm"):
        candidate, ok = _try_fit(model, method)
        if candidate is None or not np.isfinite(candidate.llf):
            messages.append(f"statsmodels {method} failed")
            continue
        if not ok:
            messages.append(f"statsmodels {method} did not converge")
        if result is None or (ok, candidate.llf) > (converged, result.llf + 1e-9):
            result, converged = candidate, ok
        if ok and method != "lbfgs":
            break
        if ok and method == "lbfgs" and float(np.asarray(candidate.cov_re)[0, 0]) > 0:
            break
    if result is None:
        raise RuntimeError("every statsmodels optimiser failed: " + "; ".join(messages))
    assert result is not None
    names = [ARM_FSM if t == "arm_x_fsm" else t for t in result.fe_params.index]
    fe = result.fe_params.to_numpy()
    k = len(fe)
    cov = pd.DataFrame(np.asarray(result.cov_params())[:k, :k], index=names, columns=names)
    cov_re = np.asarray(result.cov_re)
    var_school = float(cov_re[0, 0])
    blups = _blups(result, random_slope)
    singular = var_school < 1e-8 * float(result.scale) or (
        random_slope and float(cov_re[1, 1]) < 1e-8 * float(result.scale)
    )
    return MixedFit(
        formula=f"{design_formula(covariates)} + ({'1 + arm' if random_slope else '1'} | school), REML",
        params=dict(zip(names, map(float, fe))),
        cov_params=cov,
        var_school=var_school,
        var_pupil=float(result.scale),
        loglik_reml=float(result.llf),
        converged=converged,
        singular=bool(singular),
        n_obs=int(result.nobs),
        n_groups=int(len(blups)),
        var_slope=float(cov_re[1, 1]) if random_slope else None,
        cov_school_slope=float(cov_re[0, 1]) if random_slope else None,
        blups=blups,
        messages=tuple(messages),
    )


def _try_fit(model, method: str):
    """One REML fit with one optimiser; returns (result or None, converged without warnings)."""
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = model.fit(reml=True, method=method, maxiter=2000)
        except (np.linalg.LinAlgError, ValueError):
            return None, False
    warned = any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return result, bool(result.converged) and not warned


def _blups(result, random_slope: bool) -> pd.DataFrame:
    """Per-school predicted random effects; zeros when the school covariance is singular."""
    columns = ["intercept", "arm"] if random_slope else ["intercept"]
    try:
        effects = result.random_effects
    except ValueError:  # singular covariance: every school's BLUP is the fixed effect
        schools = pd.unique(np.asarray(result.model.group_labels))
        frame = pd.DataFrame(0.0, index=schools, columns=columns)
    else:
        frame = pd.DataFrame({k: np.asarray(v) for k, v in effects.items()}).T
        frame.columns = columns
    frame.index.name = "school_urn"
    return frame
