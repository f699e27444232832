"""Disclosure control for published pupil counts: small cells blanked so that no sum gives them back.

The rule (docs/methods.md, "Disclosure control"), after the ONS/GSS guidance on protecting
tables (secondary suppression: a blanked cell must not be recoverable from published totals):

1. **Primary.** A school whose analysed pupils in either group number 1 to ``threshold - 1``
   has its counts and figures blanked. (A 0 is a structural zero, "no pupils in that group",
   and is published.)
2. **Secondary.** The trial's total ``pupils_analysed`` equals the sum of the schools' two
   counts, so one blanked school could be recovered by subtraction. When exactly one school is
   blanked, the next smallest school (by pupils, then URN) is blanked too; and schools keep being
   added, smallest first, until the blanked schools together hold at least ``threshold`` pupils,
   so the difference itself is never a small number.
3. **Totals.** When even all schools together stay below ``threshold`` (and whenever a total
   count is 1 to ``threshold - 1``), the trial's counts are blanked (``pupils_randomised``,
   ``pupils_analysed`` and ``attrition_pct``, which would give the analysed count back).
4. **One school.** A trial with a single school publishes no per-school rows at all: that
   school's figures would be the trial's, with its URN beside them.

``protect_schools`` applies 1, 2 and 4 to one trial's per-school table; ``protect_totals``
applies 3 to the trial's evidence row.
"""

from __future__ import annotations

import math

import pandas as pd

from microtrials.guidance import SUPPRESSION_THRESHOLD

COUNT_COLUMNS = ("n_intervention", "n_control")
#: The evidence-table counts that protect_totals may blank.
TOTAL_COUNTS = ("pupils_randomised", "pupils_analysed")

PRIMARY = f"fewer than {SUPPRESSION_THRESHOLD} pupils in a group"
SECONDARY = "not published so that another school's blanked figures cannot be worked out by subtraction"


def _count(value: object) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number


def is_small(value: object, threshold: int = SUPPRESSION_THRESHOLD) -> bool:
    """True for a count from 1 to ``threshold - 1``; a blank count is treated as small (unknown)."""
    number = _count(value)
    return math.isnan(number) or 0 < number < threshold


def protect_schools(schools: pd.DataFrame, threshold: int = SUPPRESSION_THRESHOLD) -> tuple[pd.DataFrame, list[str]]:
    """One trial's per-school rows after disclosure control, and which URNs were blanked.

    Blanked rows keep their URN and round; every other column except ``note``, ``school_urn`` and ``school_round`` becomes
    blank, ``suppressed`` gives the reason without the count, and ``note`` is replaced by one that
    quotes no count. A single-school trial returns no rows.
    """
    out = schools.copy().reset_index(drop=True)
    if "suppressed" not in out.columns:
        out["suppressed"] = ""
    out["suppressed"] = out["suppressed"].fillna("").astype(object)
    if len(out) <= 1:
        return out.iloc[0:0].copy(), list(out["school_urn"].astype(str))
    counts = out[list(COUNT_COLUMNS)].apply(pd.to_numeric, errors="coerce")
    primary = counts.apply(lambda row: any(is_small(v, threshold) for v in row), axis=1)
    blanked = set(out.index[primary])
    reasons = {i: PRIMARY for i in blanked}
    if blanked:
        size = counts.sum(axis=1, min_count=1).fillna(0)
        order = sorted((i for i in out.index if i not in blanked),
                       key=lambda i: (size[i], str(out.loc[i, "school_urn"])))
        while order and (len(blanked) < 2 or size[list(blanked)].sum() < threshold):
            nxt = order.pop(0)
            blanked.add(nxt)
            reasons[nxt] = SECONDARY
    figure_columns = [c for c in out.columns if c not in ("school_urn", "school_round", "suppressed", "note")]
    for column in figure_columns:
        values = out[column]
        if pd.api.types.is_integer_dtype(values):
            out[column] = values.astype("Int64")
        elif pd.api.types.is_bool_dtype(values) or values.dtype == object:
            out[column] = values.astype(object)
    for i in sorted(blanked):
        for column in figure_columns:
            out.at[i, column] = pd.NA if str(out[column].dtype) == "Int64" else (
                None if out[column].dtype == object else math.nan)
        out.at[i, "suppressed"] = reasons[i]
        if "note" in out.columns:
            out.at[i, "note"] = "figures not published: " + reasons[i]
    return out, sorted(str(out.loc[i, "school_urn"]) for i in blanked)


def protect_totals(row: dict, threshold: int = SUPPRESSION_THRESHOLD) -> dict:
    """The evidence row with small total counts (1 to ``threshold - 1``) blanked (rule 3).

    ``attrition_pct`` is blanked with either count, since with the other it gives the count back.
    """
    out = dict(row)
    blanked = [c for c in TOTAL_COUNTS if c in out and not _blank(out[c]) and is_small(out[c], threshold)]
    for column in blanked:
        out[column] = None
    if blanked and "attrition_pct" in out:
        out["attrition_pct"] = None
    return out


def _blank(value: object) -> bool:
    try:
        return value is None or bool(pd.isna(value))
    except (TypeError, ValueError):
        return False
