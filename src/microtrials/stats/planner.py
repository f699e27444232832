"""Planning the next round: the MDES of pupils randomised within schools, the strength it would earn, schools needed.

The MDES follows PowerUpR's ``mdes.bira2`` (two-level blocked individual random assignment with
random block effects; Dong & Maynard 2013, PowerUp!, J. Res. Educ. Eff. 6:24-67; Bulus, Dong,
Kelcey & Spybrook, PowerUpR 1.1.0). Design parameters come from the intervention's earlier rounds,
else the network's trials on the same outcome, else the documented defaults below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy import stats

from microtrials.stats.effect_sizes import months_progress
from microtrials.errors import MicrotrialsError
from microtrials.stats.evidence import EvidenceStrength, evidence_strength
from microtrials.guidance import MDES_ALPHA, MDES_POWER
from microtrials.ingest.names import match_key

# Defaults when no earlier trial in the network informs them (documented in docs/registry.md):
# ICC 0.15 is the between-school share of attainment variance typically assumed for English
# school attainment tests in EEF-style trial protocols (0.15-0.20), and the value planted in the
# sample data; baseline R^2 0.40 at pupil level is a cautious value for a prior attainment test
# (a within-school pre/post correlation near 0.63; standardised reading and maths tests usually
# correlate 0.6-0.8 a year apart). Attrition 10% is the largest that keeps the EEF attrition
# rating at 5.
DEFAULT_RHO2 = 0.15
DEFAULT_R21 = 0.40
DEFAULT_ATTRITION_PCT = 10.0
MAX_SCHOOLS = 2000  # search limit for "schools needed"


@dataclass(frozen=True)
class Mdes:
    """PowerUpR's MDES output: the MDES, its (1-alpha) interval, df, standardised SE, multiplier."""

    mdes: float
    ci_low: float
    ci_high: float
    df: float
    sse: float
    multiplier: float


def multiplier(df: float | np.ndarray, power: float = MDES_POWER, alpha: float = MDES_ALPHA,
               two_tailed: bool = True) -> float | np.ndarray:
    """M = T1 + T2 (power >= 0.5; else T1 - T2), T1 = |t_{alpha/2, df}| (two-tailed) or |t_{alpha, df}|,
    T2 = |t_{power, df}| -- PowerUpR's ``.mdes.fun``."""
    t1 = np.abs(stats.t.ppf(alpha / 2 if two_tailed else alpha, df))
    t2 = np.abs(stats.t.ppf(power, df))
    return t1 + t2 if power >= 0.5 else t1 - t2


def mdes_bira2(
    n: float,
    J: float,
    rho2: float = 0.0,
    omega2: float = 0.0,
    r21: float = 0.0,
    p: float = 0.5,
    g2: int = 0,
    g1: int = 0,
    r2t2: float = 0.0,
    power: float = MDES_POWER,
    alpha: float = MDES_ALPHA,
    two_tailed: bool = True,
    blocks: str = "random",
) -> Mdes:
    """MDES for pupils randomised within schools (``n`` pupils per school, ``J`` schools).

    ``blocks="random"`` (PowerUpR ``mdes.bira2`` = ``mdes.bira2r1``, the default):
        df = J - g2 - 1,
        SSE = sqrt(rho2 omega2 (1 - r2t2) / J + (1 - rho2)(1 - r21) / (p (1 - p) J n)),
    where rho2 is the ICC, omega2 the variance of the school effects of the intervention over the
    school-level variance, r21 the share of pupil-level variance the baseline explains.
    ``blocks="fixed"`` (``mdes.bira2f1``): df = J (n - 2) - g1, SSE = sqrt((1 - r21) / (p (1 - p) J n)).
    ``blocks="constant"`` (``mdes.bira2c1``): df = J (n - 1) - g1 - 1, same SSE as fixed.
    Then MDES = M x SSE with M from :func:`multiplier`, interval MDES (1 -/+ T1 / M).
    """
    if n <= 0 or J <= 0 or not 0 < p < 1:
        raise MicrotrialsError("the plan needs a positive number of schools and of pupils per school")
    if blocks == "random":
        df = J - g2 - 1
        sse = math.sqrt(rho2 * omega2 * (1 - r2t2) / J + (1 - rho2) * (1 - r21) / (p * (1 - p) * J * n))
    elif blocks in ("fixed", "constant"):
        df = J * (n - 2) - g1 if blocks == "fixed" else J * (n - 1) - g1 - 1
        sse = math.sqrt((1 - r21) / (p * (1 - p) * J * n))
    else:
        raise ValueError(f"blocks must be 'random', 'fixed' or 'constant', not {blocks!r}")
    if df <= 0:
        raise MicrotrialsError(f"{int(J)} school{'s' if J != 1 else ''} leave no degrees of freedom; plan at least 2 schools")
    m = float(multiplier(df, power, alpha, two_tailed))
    t1 = float(abs(stats.t.ppf(alpha / 2 if two_tailed else alpha, df)))
    value = m * sse
    return Mdes(value, value * (1 - t1 / m), value * (1 + t1 / m), float(df), sse, m)


def power_bira2(es: float, n: float, J: float, rho2: float = 0.0, omega2: float = 0.0, r21: float = 0.0,
                p: float = 0.5, g2: int = 0, r2t2: float = 0.0, alpha: float = MDES_ALPHA,
                two_tailed: bool = True) -> float:
    """Power to detect ``es`` (PowerUpR ``power.bira2``): with ncp = es / SSE, df = J - g2 - 1,
    two-tailed power = 1 - F_t(t_{1-alpha/2}; df, ncp) + F_t(-t_{1-alpha/2}; df, ncp) (noncentral t)."""
    df = J - g2 - 1
    sse = math.sqrt(rho2 * omega2 * (1 - r2t2) / J + (1 - rho2) * (1 - r21) / (p * (1 - p) * J * n))
    ncp = es / sse
    if two_tailed:
        crit = stats.t.ppf(1 - alpha / 2, df)
        return float(1 - stats.nct.cdf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp))
    return float(1 - stats.nct.cdf(stats.t.ppf(1 - alpha, df), df, ncp))


@dataclass(frozen=True)
class DesignParameters:
    """ICC (rho2), pupil-level baseline R^2 (r21), effect heterogeneity (omega2), expected
    attrition, and where they came from, in words."""

    rho2: float
    r21: float
    omega2: float = 0.0
    attrition_pct: float = DEFAULT_ATTRITION_PCT
    source: str = "documented defaults"


def default_parameters() -> DesignParameters:
    """The documented defaults: ICC 0.15, baseline R^2 0.40, omega2 0, 10% attrition."""
    return DesignParameters(DEFAULT_RHO2, DEFAULT_R21, 0.0, DEFAULT_ATTRITION_PCT,
                            f"defaults (ICC {DEFAULT_RHO2:.2f}, baseline R² {DEFAULT_R21:.2f}, "
                            f"{DEFAULT_ATTRITION_PCT:.0f}% attrition): no earlier results to learn from")


def design_parameters(results: pd.DataFrame | None, intervention: str, outcome_measure: str | None = None) -> DesignParameters:
    """Design parameters from earlier results (rows as stored in ``trial_results``).

    Uses rows of the intervention (any round except the cumulative ``all rounds`` row), else rows
    on the same outcome measure, else :func:`default_parameters`. Per row, with the unconditional
    model's variances (var_school_unconditional, var_pupil_unconditional) and the primary model's
    pupil variance var_pupil and arm coefficient beta:
        rho2 = var_school_u / (var_school_u + var_pupil_u),
        r21 = 1 - (var_pupil + beta^2 / 4) / var_pupil_u   (beta^2 p(1-p), p = 1/2, adds back the
              pupil-level variance the arm itself explains, so r21 is the baseline's share only),
    clipped to [0, 0.95]; rows are averaged weighted by pupils_analysed. Attrition is the
    pupil-weighted mean attrition_pct.
    """
    if results is None or not len(results):
        return default_parameters()
    rows = results.copy()
    if "round" in rows:
        rows = rows[rows["round"].fillna("").map(match_key) != "all rounds"]
    needed = ["var_school_unconditional", "var_pupil_unconditional", "var_pupil"]
    if any(c not in rows for c in needed):
        return default_parameters()
    for column in needed + ["beta", "pupils_analysed", "attrition_pct"]:
        rows[column] = pd.to_numeric(rows[column], errors="coerce") if column in rows else np.nan
    rows = rows.dropna(subset=needed)
    rows = rows[rows["var_pupil_unconditional"] > 0]
    by_name = rows[rows["intervention"].map(match_key) == match_key(intervention)]
    if len(by_name):
        chosen = by_name
        rounds = by_name["round"].nunique() if "round" in by_name else len(by_name)
        where = f"{rounds} earlier round{'s' if rounds != 1 else ''} of {intervention}"
    elif outcome_measure and len(same := rows[rows["outcome_measure"].map(match_key) == match_key(outcome_measure)]):
        chosen = same
        where = f"the network's {len(same)} trial{'s' if len(same) != 1 else ''} on {outcome_measure}"
    else:
        return default_parameters()
    vs, vp, vpu = chosen["var_school_unconditional"], chosen["var_pupil"], chosen["var_pupil_unconditional"]
    beta = chosen["beta"].fillna(0.0)
    rho2 = (vs / (vs + vpu)).clip(0.0, 0.95)
    r21 = (1 - (vp + beta**2 / 4) / vpu).clip(0.0, 0.95)
    weight = chosen["pupils_analysed"].fillna(1.0).clip(lower=1.0)
    attrition = chosen["attrition_pct"]
    ok = attrition.notna()
    attrition_pct = float(np.average(attrition[ok], weights=weight[ok])) if ok.any() else DEFAULT_ATTRITION_PCT
    rho2_value = float(np.average(rho2, weights=weight))
    r21_value = float(np.average(r21, weights=weight))
    return DesignParameters(rho2_value, r21_value, 0.0, attrition_pct,
                            f"{where} (ICC {rho2_value:.2f}, baseline R² {r21_value:.2f}, "
                            f"{attrition_pct:.0f}% attrition)")


@dataclass(frozen=True)
class Plan:
    """What a planned round would detect and earn, and the schools needed for strengths 4 and 5."""

    intervention: str
    schools: int
    pupils_per_school: int
    parameters: DesignParameters
    mdes: Mdes
    strength: EvidenceStrength
    schools_for_4: int | None
    schools_for_5: int | None


def _analysed(pupils_per_school: float, attrition_pct: float) -> float:
    return pupils_per_school * (1 - attrition_pct / 100.0)


def planned_strength(mdes_value: float, schools: int, attrition_pct: float) -> EvidenceStrength:
    """The evidence strength (microtrials.stats.evidence.evidence_strength) a round would earn with this
    MDES, ``schools`` schools with pupils in both arms, the expected attrition, and balanced arms."""
    return evidence_strength(mdes_value, attrition_pct, 0.0, schools)


def schools_needed(target: int, pupils_per_school: float, parameters: DesignParameters, p: float = 0.5) -> int | None:
    """The fewest schools (2..MAX_SCHOOLS) whose planned strength reaches ``target``; None if never."""
    n = _analysed(pupils_per_school, parameters.attrition_pct)
    for J in range(2, MAX_SCHOOLS + 1):
        value = mdes_bira2(n, J, parameters.rho2, parameters.omega2, parameters.r21, p).mdes
        if planned_strength(value, J, parameters.attrition_pct).score >= target:
            return J
    return None


def plan(intervention: str, schools: int, pupils_per_school: int, parameters: DesignParameters,
         p: float = 0.5) -> Plan:
    """The plan for ``schools`` schools of ``pupils_per_school`` pupils, a share ``p`` in the intervention.

    Pupils analysed per school n = pupils_per_school x (1 - attrition/100); MDES from
    :func:`mdes_bira2` (random school effects, df = J - 1); strength from :func:`planned_strength`.
    """
    if schools < 2 or pupils_per_school < 2:
        raise MicrotrialsError("plan at least 2 schools and at least 2 pupils per school (one in each arm)")
    n = _analysed(pupils_per_school, parameters.attrition_pct)
    result = mdes_bira2(n, schools, parameters.rho2, parameters.omega2, parameters.r21, p)
    return Plan(
        intervention, schools, pupils_per_school, parameters, result,
        planned_strength(result.mdes, schools, parameters.attrition_pct),
        schools_needed(4, pupils_per_school, parameters, p),
        schools_needed(5, pupils_per_school, parameters, p),
    )


def _months(g: float) -> str:
    months = months_progress(g)
    return "" if months is None else f" (about {months:+d} month{'s' if abs(months) != 1 else ''})"


def _about_months(g: float) -> str:
    months = months_progress(g)
    return "an effect of unknown size" if months is None else \
        f"an effect of about {abs(months)} month{'s' if abs(months) != 1 else ''}"


def plain_words(result: Plan) -> str:
    """The plan for a head teacher: "With 8 schools of 25 pupils you could detect an effect of about
    3 months; for 4 padlocks you would need about 14 schools." (the statistician's lines follow it)."""
    pupils = result.pupils_per_school
    text = (f"With {result.schools} schools of {pupils} pupils you could detect {_about_months(result.mdes.mdes)} "
            f"or more, and the result would earn {result.strength.score} of 5 padlocks")
    if result.strength.score < 4 and result.schools_for_4 is not None:
        text += f"; for 4 padlocks you would need about {result.schools_for_4} schools"
    elif result.strength.score < 4:
        text += f"; 4 padlocks are out of reach with {pupils} pupils per school"
    return text + "."


def plan_text(result: Plan) -> str:
    """The plan as ``microtrials plan INTERVENTION --schools N --pupils-per-school M`` prints it:
    :func:`plain_words` first, then the statistician's lines."""
    m = result.mdes
    need = []
    for target, count in ((4, result.schools_for_4), (5, result.schools_for_5)):
        need.append(f"strength {target}: {count} schools" if count is not None
                    else f"strength {target}: not reachable with {result.pupils_per_school} pupils per school")
    lines = [
        plain_words(result),
        "",
        "For statisticians:",
        f"Plan for {result.intervention}: {result.schools} schools x {result.pupils_per_school} pupils, "
        "pupils randomised within each school (half to each arm).",
        f"Smallest effect it can reliably detect (MDES): {m.mdes:.2f} SD{_months(m.mdes)}, "
        "with 80% power at 5% two-sided.",
        f"Evidence strength it would earn: {result.strength.score} of 5 "
        f"({'; '.join(result.strength.reasons)}).",
        f"Schools needed at {result.pupils_per_school} pupils each: {'; '.join(need)}.",
        f"Based on {result.parameters.source}. Method: PowerUpR mdes.bira2 (random school effects, "
        f"df = schools - 1 = {m.df:.0f}, multiplier {m.multiplier:.2f}).",
    ]
    return "\n".join(lines)


def plan_summary(result: Plan) -> str:
    """For the page: :func:`plain_words`, then the statistician's figures in brackets."""
    m = result.mdes
    return (f"{plain_words(result)} (Smallest detectable effect {m.mdes:.2f} SD with 80% power at 5% two-sided; "
            f"evidence strength {result.strength.score} of 5.)")


def plans_for_page(plans: dict[tuple[str, str], Plan], registry) -> list[dict]:
    """:func:`round_plans` as the site lists them: intervention, round, outcome_measure, text."""
    by_key = {r.key: r for r in registry.rounds} if registry is not None else {}
    out = []
    for key, result in plans.items():
        r = by_key.get(key)
        out.append({"intervention": result.intervention, "round": r.round if r else "",
                    "outcome_measure": r.outcome_measure if r else "", "text": plan_summary(result)})
    return out


DEFAULT_PUPILS_PER_SCHOOL = 60  # when no earlier round says how many pupils a school randomises


def pupils_per_school(results: pd.DataFrame | None, intervention: str) -> int:
    """Pupils randomised per school in the intervention's earlier rounds (total pupils_randomised /
    total schools, cumulative rows and rows with a blank count left out), else
    :data:`DEFAULT_PUPILS_PER_SCHOOL`. The publication passes its counts after disclosure control."""
    if results is None or not len(results) or not {"pupils_randomised", "schools"} <= set(results):
        return DEFAULT_PUPILS_PER_SCHOOL
    rows = results[results["intervention"].map(match_key) == match_key(intervention)]
    if "round" in rows:
        rows = rows[rows["round"].fillna("").map(match_key) != "all rounds"]
    # only rounds whose count is published: a blanked count (a small pilot) must not come back as an average
    rows = rows[pd.to_numeric(rows["pupils_randomised"], errors="coerce").notna()]
    pupils = pd.to_numeric(rows["pupils_randomised"], errors="coerce").sum()
    schools = pd.to_numeric(rows["schools"], errors="coerce").sum()
    return int(round(pupils / schools)) if schools > 0 and pupils > 0 else DEFAULT_PUPILS_PER_SCHOOL


def plan_for(intervention: str, schools: int, pupils: int | None, results: pd.DataFrame | None,
             registry=None) -> Plan:
    """The plan the CLI prints: the registered name and primary outcome when ``registry`` knows the
    intervention (by name or alias), design parameters from ``results`` (trial_results rows),
    ``pupils`` per school or the earlier rounds' number."""
    name, outcome = intervention, None
    if registry is not None and registry.canonical(intervention):
        rounds = registry.rounds_of(intervention)
        name, outcome = rounds[-1].intervention, rounds[-1].outcome_measure
    parameters = design_parameters(results, name, outcome)
    return plan(name, schools, pupils or pupils_per_school(results, name), parameters)


def round_plans(registry, results: pd.DataFrame | None) -> dict[tuple[str, str], Plan]:
    """The plan figures for every registered round that has no results yet in ``results``
    (keyed by (intervention, round) match keys): its planned schools, the earlier rounds'
    pupils per school. Rounds with fewer than 2 planned schools are left out. A round has results
    when a row of it has pupils analysed, or a blank count (the publication passes its counts after
    disclosure control, and a blanked count is a small group, not none)."""
    done: set[tuple[str, str]] = set()
    done_names: set[str] = set()
    if results is not None and len(results):
        has = results
        if "pupils_analysed" in has:  # a row with no pupils analysed is not a result yet; a blank count
            # (withheld by disclosure control: a small group) is one
            has = has[pd.to_numeric(has["pupils_analysed"], errors="coerce").fillna(1) > 0]
        names = [match_key(registry.canonical(str(i)) or str(i)) for i in has["intervention"]]
        if "round" in has:
            done = {(n, match_key(r or "")) for n, r in zip(names, has["round"].fillna(""))}
        else:  # results before rounds were recorded: every round of an analysed intervention counts as done
            done_names = set(names)
    plans = {}
    # Linear in rounds and results: each (intervention, outcome) is worked out once, from only the
    # result rows it can use (its own, or on its outcome), and each set of figures computed once.
    by_name = _grouped(results, "intervention")
    by_outcome = _grouped(results, "outcome_measure")
    inputs: dict[tuple[str, str], tuple[int, DesignParameters]] = {}
    figures: dict[tuple[int, int, DesignParameters], Plan] = {}
    for r in registry.rounds:
        if r.key in done or r.key[0] in done_names or len(r.schools) < 2:
            continue
        pair = (r.key[0], match_key(r.outcome_measure))
        if pair not in inputs:
            own, same = by_name.get(pair[0]), by_outcome.get(pair[1])
            rows = sorted(set(() if own is None else own.index) | set(() if same is None else same.index))
            usable = results.loc[rows] if rows else None
            inputs[pair] = (pupils_per_school(own, r.intervention),
                            design_parameters(usable, r.intervention, r.outcome_measure))
        pupils, parameters = inputs[pair]
        key = (len(r.schools), pupils, parameters)
        if key not in figures:
            figures[key] = plan(r.intervention, len(r.schools), pupils, parameters)
        plans[r.key] = replace(figures[key], intervention=r.intervention)
    return plans


def _grouped(results: pd.DataFrame | None, column: str) -> dict[str, pd.DataFrame]:
    """``results`` split by the match key of ``column`` (empty without results)."""
    if results is None or not len(results) or column not in results:
        return {}
    return dict(tuple(results.groupby(results[column].astype(str).map(match_key), sort=False)))


def plan_from_warehouse(con, intervention: str, schools: int, pupils: int | None, registry=None) -> str:
    """What ``microtrials plan`` prints: :func:`plan_text` of :func:`plan_for`, with earlier results
    read from the warehouse's ``trial_results`` (none yet: the documented defaults)."""
    from microtrials.ingest import warehouse

    results = con.execute(warehouse.sql("trial_results")).df() if warehouse.table_exists(con, "trial_results") else None
    return plan_text(plan_for(intervention, schools, pupils, results, registry))
