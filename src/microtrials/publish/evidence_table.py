"""The evidence table: one row per trial, in the contract's columns and order, and the per-school table."""

from __future__ import annotations

import math

import pandas as pd

from microtrials.stats import trials
from microtrials.stats.effect_sizes import months_progress
from microtrials.stats.trials import TrialResult

# The contract's columns, in order (docs/extract-format.md, section 2).
COLUMNS = [
    "intervention", "outcome_measure", "schools", "schools_both_arms", "pupils_randomised",
    "pupils_analysed", "attrition_pct", "effect_size", "ci_low", "ci_high", "p_value",
    "months_progress", "tau", "i2", "pi_low", "pi_high", "status", "p_new_school_benefits",
    "fsm_effect_size", "fsm_ci_low", "fsm_ci_high", "evidence_strength", "notes",
]
# Published after the contract's columns (the contract allows more): months for the FSM effect,
# the round and outcome role of the row, and the registry's columns (registry.EVIDENCE_COLUMNS).
REGISTRY_COLUMNS = ["toolkit_strand", "national_months", "cost_per_pupil", "cost_rating", "description"]
EXTRA_COLUMNS = ["fsm_months_progress", "round", "outcome_role", *REGISTRY_COLUMNS]
# Rows sort by intervention, outcome_measure, then round by start_date with "all rounds" last.
ROW_ORDER = ["intervention", "outcome_measure", "round_order"]
SCHOOL_COLUMNS = ["school_urn", "n_intervention", "n_control", "g", "ci_low", "ci_high", "eb_g", "note"]


def _r(value: float | None, digits: int = 4) -> float | None:
    """Round for publication; None (blank) for a missing or non-finite figure."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def evidence_row(result: TrialResult) -> dict[str, object]:
    """The evidence-table row for one trial. Each figure is a field of ``TrialResult``:

    effect_size/ci = result.headline (the multisite model's arm coefficient on the unconditional
    total SD); p_value = result.p_value; tau, i2, pi and p_new_school_benefits = result.spread (the
    same model: slope SD / total SD, prediction interval on k - 1 df); fsm_* = result.fsm;
    evidence_strength = result.strength.score; status = result.status. A not_estimable row has
    every figure blank and its reason first in notes.
    """
    headline, pool, fsm, strength = result.headline, result.spread, result.fsm, result.strength
    notes = list(result.notes)
    if strength is not None:
        notes.append("evidence strength " + strength.reasons[0] + "".join("; " + r for r in strength.reasons[1:]))
    return {
        "intervention": result.intervention,
        "outcome_measure": result.outcome_measure,
        "schools": result.schools,
        "schools_both_arms": result.schools_both_arms,
        "pupils_randomised": result.pupils_randomised,
        "pupils_analysed": result.pupils_analysed,
        "attrition_pct": _r(result.attrition.overall, 1),
        "effect_size": _r(headline and headline.g),
        "ci_low": _r(headline and headline.ci_low),
        "ci_high": _r(headline and headline.ci_high),
        "p_value": None if result.p_value is None else float(f"{result.p_value:.4g}"),
        "months_progress": None if headline is None else months_progress(headline.g),
        "tau": _r(pool and pool.tau),
        "i2": _r(pool and pool.i2, 1),
        "pi_low": _r(pool and pool.pi_low),
        "pi_high": _r(pool and pool.pi_high),
        "status": result.status,
        "p_new_school_benefits": _r(pool and pool.p_new_positive),
        "fsm_effect_size": _r(fsm and fsm.g),
        "fsm_ci_low": _r(fsm and fsm.ci_low),
        "fsm_ci_high": _r(fsm and fsm.ci_high),
        "evidence_strength": None if strength is None else strength.score,
        "notes": "; ".join(notes),
        "fsm_months_progress": None if fsm is None else months_progress(fsm.g),
        "round": result.round,
        "outcome_role": result.outcome_role,
        **{c: result.extras.get(c) for c in REGISTRY_COLUMNS},
    }


def evidence_table(results: list[TrialResult]) -> pd.DataFrame:
    """Every trial's row, sorted by intervention, outcome_measure, then round (by start_date, "all rounds" last)."""
    table = pd.DataFrame([evidence_row(r) for r in results], columns=COLUMNS + EXTRA_COLUMNS)
    order = pd.Series([r.extras.get("round_order", 0) for r in results], dtype="float64")
    table = table.assign(_order=order.fillna(0).to_numpy() if len(results) else [])
    return (table.sort_values(["intervention", "outcome_measure", "_order"], kind="stable")
            .drop(columns="_order").reset_index(drop=True))


def school_table(result: TrialResult) -> pd.DataFrame:
    """Each school's own result for one trial (before small-group suppression)."""
    if result.per_school.empty:
        return pd.DataFrame(columns=["intervention", "outcome_measure", "round", "school_round", *SCHOOL_COLUMNS])
    frame = result.per_school[SCHOOL_COLUMNS].copy()
    for column in ("g", "ci_low", "ci_high", "eb_g"):
        frame[column] = frame[column].astype(float).round(4)
    frame.insert(0, "school_round", [trials.split_unit(u)[1] or result.round for u in frame["school_urn"]])
    frame["school_urn"] = [trials.split_unit(u)[0] for u in frame["school_urn"]]
    frame.insert(0, "round", result.round)
    frame.insert(0, "outcome_measure", result.outcome_measure)
    frame.insert(0, "intervention", result.intervention)
    return frame
