"""A small load report and evidence table for the site's load-report tests."""

from __future__ import annotations

import pandas as pd


EVIDENCE = pd.DataFrame([dict(
    intervention="Reciprocal reading", outcome_measure="NGRT standardised score", schools=2, schools_both_arms=2,
    pupils_randomised=7191, pupils_analysed=7190, attrition_pct=0.0, effect_size=0.2, ci_low=0.1, ci_high=0.3,
    p_value=0.01, months_progress=3, tau=0.05, i2=10.0, pi_low=-0.1, pi_high=0.5, status="published",
    p_new_school_benefits=0.9, fsm_effect_size=None, fsm_ci_low=None, fsm_ci_high=None, evidence_strength=3,
    notes="", fsm_months_progress=None)])


# Distinctive counts: none of these numbers may appear anywhere in the public report.
COUNTS = {"rows_read": [4317, 2273, 3391, 5519], "rows_loaded": [4317, 2269, 0, 5513],
          "rows_quarantined": [0, 4, 0, 6], "rows_with_warnings": [0, 0, 0, 6]}


def report(**changes) -> pd.DataFrame:
    frame = pd.DataFrame({
        "file_name": ["111109.csv", "111135.csv", "222230.csv", "111201.csv"],
        "status": ["loaded", "loaded", "rejected", "unchanged"],
        "school_urn": ["111109", "111135", "222230", "111201"],
        "trials": ["Reciprocal reading / NGRT standardised score"] * 4,
        **COUNTS,
        "quarantined_by_reason": ["", "arm not 'intervention' or 'control': 4", "",
                                  "implausible value: 2; duplicate pupil row: 4"],
        "warnings": ["read as Windows-1252", "", "", "gender not understood: 6"],
        "columns_dropped": ["", "", "", "notes"],
        "reason": ["", "", "222230.csv: columns may be swapped: the 'outcome' column has 3391 different values in "
                   "3391 rows, as a column of pupil identifiers would; check each header and send the file again",
                   "not replaced: Reciprocal reading / NGRT standardised score: this file has 5513 loadable rows "
                   "for the trial, the school's earlier delivery 5519: the earlier rows are kept"],
    })
    for column, values in changes.items():
        frame[column] = values
    return frame
