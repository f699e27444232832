"""The pages fixture of issue 23 (graded imbalances, an interim trial, an intervention in two rounds, three runs)."""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from microtrials import history
from microtrials import site as site_module
from microtrials.registry import read_registry
from microtrials.site import build_site
from tests.helpers.site import _row, small_load_report

READING = ("Reciprocal reading", "NGRT standardised score")
REGISTRY = (
    "intervention,outcome_measure,round,start_date,end_date,schools,registered_on,year_groups,dosage,delivered_by,"
    "contact,national_months,cost_per_pupil\n"
    "Reciprocal reading,NGRT standardised score,2025 Autumn,2025-09-08,2025-12-19,111001 111002 111003,2025-07-14,"
    "Y7,2 x 30 min a week for 10 weeks,trained TA,\"Research lead, Park End Primary\",6,25\n"
    "Reciprocal reading,NGRT standardised score,2026 Summer,2026-04-20,2026-07-17,111004 111005 111006,2026-03-02,"
    "Y7,2 x 30 min a week for 10 weeks,trained TA,\"Research lead, Park End Primary\",6,25\n"
)


def balanced(difference: float, **changes) -> dict:
    """A final trial whose groups differed by ``difference`` SD at baseline."""
    return _row(f"Balance {difference}", "Reading age", baseline_difference=difference, **changes)


def pages_evidence() -> pd.DataFrame:
    """Three graded imbalances, a near-certain trial, a strong interim trial, and an intervention in two rounds."""
    rows = [balanced(0.03, p_new_school_benefits=0.9996, months_progress=5, evidence_strength=3),
            balanced(0.08, months_progress=2), balanced(0.28, months_progress=1, p_new_school_benefits=0.001),
            _row("Interim star", "Maths test", status="interim", months_progress=9, evidence_strength=4,
                 effect_size=0.6),
            *[_row(*READING, round=r, months_progress=m, effect_size=m / 12, national_months=6, cost_rating="£",
                   status=s) for r, m, s in (("2025 Autumn", 3, "published"), ("2026 Summer", 4, "interim"),
                                             ("all rounds", 3, "published"))]]
    return pd.DataFrame(rows)


def pages_schools() -> dict:
    def frame(urns, rounds):
        return pd.DataFrame({"school_urn": urns, "school_round": rounds, "n_intervention": 20, "n_control": 20,
                             "g": 0.2, "ci_low": 0.0, "ci_high": 0.4, "eb_g": 0.2, "note": ""})
    return {(*READING, "2025 Autumn"): frame(["111001", "111002"], ["2025 Autumn"] * 2),
            (*READING, "2026 Summer"): frame(["111004", "111001"], ["2026 Summer"] * 2),
            (*READING, "all rounds"): frame(["111001", "111002", "111004", "111001"],
                                            ["2025 Autumn", "2025 Autumn", "2026 Summer", "2026 Summer"])}


def three_runs(evidence: pd.DataFrame) -> pd.DataFrame:
    """Three publications: only the 0.08 SD trial changes in the second and third (other pupil numbers:
    a school's corrected file)."""
    frames = []
    for day, (effect, pupils) in ((1, (0.17, 241)), (2, (0.19, 239)), (3, (0.21, 236))):
        mine = evidence["intervention"] == "Balance 0.08"
        table = site_module.published_table(evidence.assign(
            effect_size=evidence["effect_size"].where(~mine, effect),
            pupils_analysed=evidence["pupils_analysed"].where(~mine, pupils)))
        frames.append(history.publication_frame(table, datetime(2026, 11, day, 9)))
    return pd.concat(frames, ignore_index=True)


def pages_site() -> dict[str, bytes]:
    evidence = pages_evidence()
    return build_site(evidence, pages_schools(), small_load_report(), "3 November 2026", "3 November 2026",
                      history=three_runs(evidence), registry=read_registry(REGISTRY.encode()))
