"""A small publication (evidence, schools, load report) built with hostile names, for the site and page tests."""

from __future__ import annotations

import html5lib
import numpy as np
import pandas as pd

from microtrials.publish.site import build_site, trial_slug


NASTY = "<script>alert('x')</script>"


SQL = "'); DROP TABLE pupils; --"


CAFE = "Café reading"


LONG = "Supercalifragilisticexpialidocious" * 4  # one 136-letter word: must wrap, never widen a page


PUPIL_IDS = ["P1111000001", "P1111000002", "SECRET-PUPIL-7"]


BASE = dict(schools=4, schools_both_arms=4, pupils_randomised=260, pupils_analysed=241, attrition_pct=7.3,
            effect_size=0.2481, ci_low=0.1012, ci_high=0.3950, p_value=0.0009, months_progress=3, tau=0.0812,
            i2=21.5, pi_low=-0.0503, pi_high=0.5465, status="published", p_new_school_benefits=0.93,
            fsm_effect_size=0.31, fsm_ci_low=0.02, fsm_ci_high=0.60, evidence_strength=4, notes="",
            fsm_months_progress=4)


def _row(intervention, outcome, **changes):
    return dict(BASE, intervention=intervention, outcome_measure=outcome, **changes)


def small_evidence() -> pd.DataFrame:
    """Trials in the contract's columns covering every status, a tiny trial and hostile names."""
    blank = dict(effect_size=np.nan, ci_low=np.nan, ci_high=np.nan, p_value=np.nan, months_progress=np.nan,
                 tau=np.nan, i2=np.nan, pi_low=np.nan, pi_high=np.nan, p_new_school_benefits=np.nan,
                 fsm_effect_size=np.nan, fsm_ci_low=np.nan, fsm_ci_high=np.nan, evidence_strength=np.nan,
                 fsm_months_progress=np.nan)
    rows = [
        _row("Reciprocal reading", "NGRT standardised score", p_value=1.69e-14,
             notes="evidence strength 4 of 5 before deductions; -1: the arms differed at baseline by 0.061 SD "
                   "(more than 0.05 SD); random-slope model singular: slope SD or correlation on its boundary"),
        _row(CAFE, "Café test", schools=3, schools_both_arms=3, pupils_randomised=150, pupils_analysed=140,
             effect_size=0.0934, ci_low=-0.0701, ci_high=0.2569, p_value=0.263, months_progress=1, evidence_strength=2,
             status="interim", notes="FSM effect not estimated: too few pupils"),
        _row(NASTY, SQL, schools=2, schools_both_arms=2, pupils_randomised=90, pupils_analysed=84,
             effect_size=-0.1203, months_progress=-2, evidence_strength=0, notes="=HYPERLINK(\"http://evil\")",
             status="not_refreshed", pi_low=np.nan, pi_high=np.nan),
        _row("Tiny trial", "Writing assessment", schools=1, schools_both_arms=1, pupils_randomised=9,
             pupils_analysed=8, effect_size=0.5, months_progress=6, evidence_strength=0),
        _row("Pilot of a new thing", "KS2 reading", schools=1, schools_both_arms=1, pupils_randomised=40,
             pupils_analysed=38, status="not_estimable",
             notes="only one school has sent results so far; 3 pupils had no baseline", **blank),
        _row(LONG, "Writing", schools=1, schools_both_arms=1, pupils_randomised=30, pupils_analysed=30),
    ]
    return pd.DataFrame(rows)


def _schools(urns, n_int, n_con, g, se, notes=None):
    g, se = np.asarray(g, dtype=float), np.asarray(se, dtype=float)
    return pd.DataFrame({"school_urn": urns, "n_intervention": n_int, "n_control": n_con, "g": g,
                         "ci_low": g - 1.96 * se, "ci_high": g + 1.96 * se, "eb_g": 0.5 * g + 0.1,
                         "note": notes or [""] * len(urns)})


def small_schools() -> dict[tuple[str, str], pd.DataFrame]:
    """Per-school figures: a small school (needs a second one blanked), a one-arm school, a one-school trial."""
    return {
        ("Reciprocal reading", "NGRT standardised score"): _schools(
            ["111201", "111202", "111203", "111204"], [40, 35, 30, 70], [38, 7, 31, 0],
            [0.31, 0.6, 0.18, np.nan], [0.22, 0.4, 0.25, np.nan],
            ["", "", "", "one arm only (70 pupils in intervention)"]),
        (CAFE, "Café test"): _schools(["111301", "111302", "111303"], [25, 24, 22], [24, 23, 22],
                                      [0.05, 0.15, 0.08], [0.28, 0.29, 0.3]),
        (NASTY, SQL): _schools(["111401", "111402"], [22, 20], [21, 21], [-0.2, -0.03], [0.3, 0.31]),
        ("Tiny trial", "Writing assessment"): _schools(["111501"], [4], [4], [0.5], [0.7]),
        ("Pilot of a new thing", "KS2 reading"): _schools(["111601"], [20], [18], [np.nan], [np.nan]),
    }


def small_load_report() -> pd.DataFrame:
    return pd.DataFrame({
        "file_name": ["111201.csv", "111202 Smith J pupils.csv", "111999.csv", "111203_reciprocal_reading_2026-11.csv"],
        "status": ["loaded", "loaded", "rejected", "loaded"],
        "school_urn": ["111201", "111202", "", "111203"],
        "rows_read": [78, 45, 3, 61], "rows_loaded": [78, 42, 0, 61], "rows_quarantined": [0, 3, 0, 0],
        "quarantined_by_reason": ["", "arm not understood: 3", "", ""],
        "pupil_id": PUPIL_IDS + ["P1"],  # must never be published
        "reason": ["", "", "@SUM(1+1) not a header", ""],
    })


def small_site(problems=None) -> dict[str, bytes]:
    return build_site(small_evidence(), small_schools(), small_load_report(), "20 November 2026",
                      "23 November 2026", problems=problems)


def folder(intervention, outcome):
    return trial_slug(intervention, outcome)


def text_of(html: str) -> str:
    tree = html5lib.parse(html, namespaceHTMLElements=False)
    return " ".join(" ".join(tree.find(".//main").itertext()).split())
