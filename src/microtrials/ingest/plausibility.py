"""Plausible scores: a range the registry declares, else only gross errors judged across a whole trial (docs/loading.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from microtrials.ingest import warehouse

GROSS_IQRS = 10.0
GROSS_EXTRA_DIGITS = 2
UNUSUAL_IQRS = 3.0
MIN_SCORES = 10
QUANTILES = (0.01, 0.25, 0.5, 0.75, 0.99)
SCALE_MIN_SCORES = 5
COLUMNS = ("outcome", "baseline")

# Rule names as the quarantine, warnings and load report show them.
OUT_OF_RANGE = "outside the declared range"
GROSS = "implausible value"
UNUSUAL = "unusual value"

_THEN = {
    "outcome": "the score was left out (the pupil still counts as randomised); correct it and send the file again",
    "baseline": "it was left blank for this pupil; correct it and send the file again",
}


@dataclass(frozen=True)
class Range:
    """A declared valid range (either end may be open)."""

    low: float | None = None
    high: float | None = None

    def outside(self, values: np.ndarray) -> np.ndarray:
        """Which finite ``values`` fall outside the range (NaN never does)."""
        out = np.zeros(len(values), dtype=bool)
        with np.errstate(invalid="ignore"):
            if self.low is not None:
                out |= values < self.low
            if self.high is not None:
                out |= values > self.high
        return out

    def text(self) -> str:
        """'0 to 10', 'at least 0' or 'at most 10'."""
        if self.low is not None and self.high is not None:
            return f"{self.low:g} to {self.high:g}"
        return f"at least {self.low:g}" if self.low is not None else f"at most {self.high:g}"


@dataclass(frozen=True)
class Spread:
    """A trial's scores of one column, summarised: their count, 1st/25th/50th/75th/99th percentiles
    and the upper quartile of their absolute values. (Fields may also be arrays, one per judged
    value, to judge many trials at once.)"""

    scores: int
    p01: float
    q1: float
    median: float
    q3: float
    p99: float
    abs_q3: float

    def gross(self, values: np.ndarray) -> np.ndarray:
        """Gross errors among ``values`` (NaN never is one)."""
        iqr, span = np.subtract(self.q3, self.q1), np.subtract(self.p99, self.p01)
        with np.errstate(invalid="ignore"):
            far = (np.abs(values - self.median) > GROSS_IQRS * iqr) & (span > 0) & (
                (values < np.subtract(self.p01, span)) | (values > np.add(self.p99, span))
            )
            long = digits(values) >= digits(np.asarray(self.abs_q3, dtype=float)) + GROSS_EXTRA_DIGITS
        return (far | long) & np.isfinite(values) & (np.asarray(self.scores) >= MIN_SCORES)

    def unusual(self, values: np.ndarray) -> np.ndarray:
        """Scores to confirm: further than ``UNUSUAL_IQRS`` IQRs from the median, not gross errors."""
        iqr = np.subtract(self.q3, self.q1)
        with np.errstate(invalid="ignore"):
            odd = (np.abs(values - self.median) > UNUSUAL_IQRS * iqr) & (iqr > 0)
        return odd & (np.asarray(self.scores) >= MIN_SCORES) & ~self.gross(values)

    def text(self) -> str:
        return (f"median {self.median:.6g}, interquartile range {self.q3 - self.q1:.6g}, 98% of them from "
                f"{self.p01:.6g} to {self.p99:.6g}, {self.scores} scores")


def digits(values: np.ndarray) -> np.ndarray:
    """Digits of each value's whole-number part (0.5 and 7 have 1, 538 has 3, 99999999 has 8; NaN 0)."""
    whole = np.floor(np.abs(np.where(np.isfinite(values), values, 0.0)))
    return (np.floor(np.log10(np.maximum(whole, 1))) + 1).astype(int) * np.isfinite(values)


def spread_of(values: np.ndarray) -> Spread:
    """:class:`Spread` of finite ``values`` (quartiles by linear interpolation, as DuckDB's quantile_cont)."""
    x = values[np.isfinite(values)]
    if not len(x):
        return Spread(0, *[math.nan] * 6)
    p01, q1, median, q3, p99 = (float(q) for q in np.quantile(x, QUANTILES))
    return Spread(len(x), p01, q1, median, q3, p99, float(np.quantile(np.abs(x), 0.75)))


@dataclass
class Verdict:
    """What :func:`judge_file` found in one file: trials on another scale (trial -> reason), values
    set aside and values to confirm (line, intervention, outcome_measure, column_name, rule, reason)."""

    other_scale: dict[tuple[str, str], str]
    set_aside: pd.DataFrame
    unusual: pd.DataFrame


ENTRY_COLUMNS = ["line", "intervention", "outcome_measure", "column_name", "rule", "reason"]


def judge_file(
    rows: pd.DataFrame,
    keys: dict[tuple[str, str], str],
    spreads: dict[tuple[str, str], Spread],
    ranges: dict[tuple[str, str], Range],
) -> Verdict:
    """Judge one file's ``rows`` (intervention, outcome_measure, outcome, baseline, line).

    ``keys`` maps the file's (intervention, outcome_measure) to its trial key; ``spreads`` and
    ``ranges`` are keyed by (trial key, column).
    """
    other_scale: dict[tuple[str, str], str] = {}
    set_aside, unusual = [], []
    for (intervention, measure), group in rows.groupby(["intervention", "outcome_measure"], sort=False):
        trial = keys[intervention, measure]
        for column in COLUMNS:
            values = group[column].to_numpy(dtype=float)
            declared = ranges.get((trial, column))
            spread = spreads.get((trial, column))
            scale = _other_scale(column, measure, values, declared, spread)
            if scale and column == "outcome":
                other_scale[intervention, measure] = scale
                break
            out, rule, reason = _set_aside(column, values, declared, spread)
            set_aside.append(_entries(group[out], column, rule, reason))
            if declared is None and spread is not None:
                odd = spread.unusual(values)
                unusual.append(_entries(group[odd], column, UNUSUAL, _unusual_reason(column, spread)))
    return Verdict(other_scale, _frame(set_aside), _frame(unusual))


def _set_aside(column: str, values: np.ndarray, declared: Range | None, spread: Spread | None):
    """The mask of values set aside, its rule and reason (a declared range replaces the gross rule)."""
    if declared is not None:
        reason = (f"{column} is outside the range the trial registry declares for it ({declared.text()}); "
                  + _THEN[column])
        return declared.outside(values), OUT_OF_RANGE, reason
    if spread is None:
        return np.zeros(len(values), dtype=bool), GROSS, ""
    reason = (
        f"{column} is implausible: far outside this trial's {column} scores at every school ({spread.text()}), "
        f"or {GROSS_EXTRA_DIGITS} or more digits longer than most of them: check it for a typing error "
        "(e.g. extra digits); " + _THEN[column]
    )
    return spread.gross(values), GROSS, reason


def _unusual_reason(column: str, spread: Spread) -> str:
    return (
        f"{column} is unusual for this trial (more than {UNUSUAL_IQRS:g} interquartile ranges from the median of "
        f"its {column} scores at every school: {spread.text()}); it was loaded as it is; please check it is right, "
        "and if it is not, correct it and send the file again"
    )


def _other_scale(column: str, measure: str, values: np.ndarray, declared: Range | None, spread: Spread | None) -> str:
    """Why a file's scores for a trial look like another scale (their median is itself out of range
    or a gross error), or ''."""
    finite = values[np.isfinite(values)]
    if len(finite) < SCALE_MIN_SCORES:
        return ""
    middle = np.array([float(np.median(finite))])
    if declared is not None and declared.outside(middle)[0]:
        against = f"outside the range the trial registry declares ({declared.text()})"
    elif declared is None and spread is not None and spread.gross(middle)[0]:
        against = f"far outside the trial's scores at every school ({spread.text()})"
    else:
        return ""
    return (
        f"this file's {measure} scores for the trial have a median of {middle[0]:.6g}, {against}, as if they were "
        "on another scale (e.g. multiplied by 10 or out of another total); they were not loaded; check the scores "
        "are the assessment's scores the trial uses and send the file again"
    )


def _entries(rows: pd.DataFrame, column: str, rule: str, reason: str) -> pd.DataFrame:
    return pd.DataFrame(
        {"line": rows["line"].to_numpy(), "intervention": rows["intervention"].to_numpy(),
         "outcome_measure": rows["outcome_measure"].to_numpy(), "column_name": column, "rule": rule,
         "reason": reason},
        columns=ENTRY_COLUMNS,
    )


def _frame(parts: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=ENTRY_COLUMNS)


# ---------------------------------------------------------------------------------------------
# From the warehouse and the batch


def batch_frames(files: list[tuple[str, pa.Table]], keys: dict[tuple[str, str], str],
                 spellings: list[tuple], trial_key) -> dict[str, pa.Table]:
    """The frames ``sql/trial_score_spread.sql`` reads: the stored spellings of the batch's trials
    (``spellings``: the warehouse's (intervention, outcome_measure, ...) rows), the batch's (school,
    trial) pairs, and every score of the batch. ``files`` holds (school_urn, pupils) per file."""
    wanted = set(keys.values())
    stored = [(i, m, trial_key(i, m)) for i, m, *_ in spellings]
    stored = [s for s in stored if s[2] in wanted]
    pairs, scores = set(), []
    for school, pupils in files:
        trials = [keys[i, m] for i, m in zip(pupils.column("intervention").to_pylist(),
                                              pupils.column("outcome_measure").to_pylist())]
        pairs.update((school, t) for t in trials)
        for column in COLUMNS:
            scores.append(pd.DataFrame({"trial_key": trials, "column_name": column,
                                        "score": pupils.column(column).to_numpy(zero_copy_only=False)}))
    text = pa.string()
    return {
        "spelling_keys": pa.table({name: pa.array([s[k] for s in stored], text)
                                   for k, name in enumerate(("intervention", "outcome_measure", "trial_key"))}),
        "batch_pairs": pa.table({"school_urn": pa.array([p[0] for p in sorted(pairs)], text),
                                 "trial_key": pa.array([p[1] for p in sorted(pairs)], text)}),
        "batch_scores": pa.Table.from_pandas(pd.concat(scores, ignore_index=True).astype({"score": float}),
                                             preserve_index=False),
    }


def spreads_from(rows: list[tuple]) -> dict[tuple[str, str], Spread]:
    """``sql/trial_score_spread.sql``'s rows as :class:`Spread` per (trial key, column)."""
    return {(trial, column): Spread(int(n), *(float(v) for v in values)) for trial, column, n, *values in rows}


def declared_ranges(con: duckdb.DuckDBPyConnection, trial_key) -> dict[tuple[str, str], Range]:
    """The ranges the current registry (table ``registry_rounds``) declares, per (trial key, column).

    Rounds of one trial that declare different ranges give their widest (lowest min, highest max).
    """
    if not warehouse.table_exists(con, "registry_rounds"):
        return {}
    con.execute(warehouse.sql("registry_schema"))  # a warehouse from before the range columns gains them
    ranges: dict[tuple[str, str], Range] = {}
    for intervention, _aliases, measure, *bounds in con.execute(warehouse.sql("declared_ranges")).fetchall():
        for column, low, high in (("outcome", bounds[0], bounds[1]), ("baseline", bounds[2], bounds[3])):
            if low is None and high is None:
                continue
            key = (trial_key(intervention, measure), column)
            before = ranges.get(key)
            if before is not None:
                low = None if low is None or before.low is None else min(low, before.low)
                high = None if high is None or before.high is None else max(high, before.high)
            ranges[key] = Range(low, high)
    return ranges
