"""The evidence table: one row per trial, in the contract's columns and order."""

from __future__ import annotations

import pandas as pd

from microtrials.effect_sizes import months_progress
from microtrials.trials import TrialResult

# The contract's columns, in order (../shared/extract-format.md, section 2).
COLUMNS = [
    "intervention", "outcome_measure", "schools", "schools_both_arms", "pupils_randomised",
    "pupils_analysed", "attrition_pct", "effect_size", "ci_low", "ci_high", "p_value",
    "months_progress", "tau", "i2", "pi_low", "pi_high", "fsm_effect_size", "fsm_ci_low",
    "fsm_ci_high", "evidence_strength", "notes",
]
NOT_YET_COMPUTED = ["tau", "i2", "pi_low", "pi_high", "fsm_effect_size", "fsm_ci_low",
                    "fsm_ci_high", "evidence_strength"]


def evidence_row(result: TrialResult) -> dict[str, object]:
    """The evidence-table row for one trial; each figure comes from ``TrialResult``."""
    notes = list(result.notes)
    notes.append("not yet computed: " + ", ".join(NOT_YET_COMPUTED))
    return {
        "intervention": result.intervention,
        "outcome_measure": result.outcome_measure,
        "schools": result.schools,
        "schools_both_arms": result.schools_both_arms,
        "pupils_randomised": result.pupils_randomised,
        "pupils_analysed": result.pupils_analysed,
        "attrition_pct": round(result.attrition_pct, 1),
        "effect_size": round(result.effect_size, 4),
        "ci_low": round(result.ci_low, 4),
        "ci_high": round(result.ci_high, 4),
        "p_value": float(f"{result.p_value:.4g}"),
        "months_progress": months_progress(result.effect_size),
        **{column: None for column in NOT_YET_COMPUTED},
        "notes": "; ".join(notes),
    }


def evidence_table(results: list[TrialResult]) -> pd.DataFrame:
    """Every trial's row, sorted by intervention then outcome_measure."""
    rows = [evidence_row(r) for r in results]
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.sort_values(["intervention", "outcome_measure"], kind="stable").reset_index(drop=True)
