"""View objects for the site's templates: each trial's figures already worded and formatted for people.

Nothing here writes HTML; ``templates/`` lays these objects out. Formatting rules: a true minus
sign (U+2212), months signed ("+3 months"), p-values to 4 decimals and "<0.0001" below, never
scientific notation.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import pandas as pd

from microtrials.effect_sizes import months_progress
from microtrials.guidance import MIN_SCHOOLS_BOTH_ARMS, SUPPRESSION_THRESHOLD
from microtrials.registry import local_and_national

MINUS = "\u2212"
NOT_SECURE_AT_MOST = 2  # padlocks: 0 to 2 are shown as "not yet secure"
COST_WORDS = {1: "very low cost", 2: "low cost", 3: "moderate cost", 4: "high cost", 5: "very high cost"}
STATUS_TEXT = {
    "interim": "Interim result: more schools are still to send results, so these figures may change.",
    "not_refreshed": "Not updated in the latest run: these are the figures published before.",
    "not_estimable": "No result yet.",
}


# --- formatting -----------------------------------------------------------------------------

def is_blank(value: object) -> bool:
    """True for None, NaN, pd.NA and empty text."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def number(value: object) -> float | None:
    """The value as a finite float, or None."""
    if is_blank(value):
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def fmt(value: object, digits: int = 2) -> str:
    """``0.2481`` -> ``"0.25"``, negatives with a true minus, no "-0.00"; blank -> ``""``."""
    x = number(value)
    if x is None:
        return ""
    text = f"{x:.{digits}f}"
    if text.lstrip("-").strip("0.") == "":
        text = text.lstrip("-")
    return text.replace("-", MINUS)


def interval(low: object, high: object, digits: int = 2) -> str:
    lo, hi = fmt(low, digits), fmt(high, digits)
    return f"{lo} to {hi}" if lo and hi else ""


def p_value(value: object) -> str:
    """p to 4 decimals; "<0.0001" below that."""
    x = number(value)
    if x is None:
        return ""
    return "<0.0001" if x < 0.0001 else f"{x:.4f}"


def months(value: object) -> str:
    """``3`` -> ``"+3 months"``, ``-1`` -> ``"−1 month"``, ``0`` -> ``"0 months"``; blank -> ``""``."""
    x = number(value)
    if x is None:
        return ""
    m = int(round(x))
    unit = "month" if abs(m) == 1 else "months"
    return (f"{m:+d}" if m else "0").replace("-", MINUS) + f" {unit}"


def whole(value: object) -> str:
    x = number(value)
    return "" if x is None else f"{int(round(x)):,}"


def percent(value: object, digits: int = 0) -> str:
    x = number(value)
    return "" if x is None else f"{x:.{digits}f}%"


def split_notes(text: object) -> list[str]:
    """Notes split on top-level "; " (not inside parentheses) into separate items."""
    if is_blank(text):
        return []
    text = str(text)
    parts, depth, current = [], 0, []
    for i, char in enumerate(text):
        depth += (char == "(") - (char == ")")
        if char == ";" and depth <= 0 and text[i + 1:i + 2] in (" ", ""):
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


# --- a trial ---------------------------------------------------------------------------------

@dataclass
class Figure:
    """One labelled figure for the "For evaluators" list: plain label, column code, shown value."""

    label: str
    code: str
    value: str


@dataclass
class TrialView:
    """Everything a trial's card and page show, worded for a head teacher."""

    folder: str
    intervention: str
    outcome_measure: str
    status: str
    status_text: str
    description: str
    months: str
    months_sign: str  # "up", "down", "none" or "blank": for styling only
    fsm_months: str
    strength: int | None
    strength_text: str
    not_secure: bool
    cost_pounds: str
    cost_text: str
    national: str
    expect: str
    schools: str
    pupils: str
    caveats: list[str]
    notes: list[str]
    suppressed: str
    evaluator_figures: list[Figure] = field(default_factory=list)
    message: str = ""  # set when this trial's page or plot could not be built
    round: str = ""
    here_and_national: str = ""  # "here: +3 months (+2 to +4); nationally (EEF Toolkit, ...): +6 months"


def _caveats(row: pd.Series, notes: list[str]) -> list[str]:
    """At most two caveats written for a school, most important first."""
    found = []
    both = number(row.get("schools_both_arms"))
    if both is not None and both < MIN_SCHOOLS_BOTH_ARMS:
        n = int(both)
        found.append(f"Only {n} school{'s' if n != 1 else ''} so far.")
    if any("differed at baseline" in n or "imbalance" in n.lower() for n in notes):
        found.append("The groups differed a little before the intervention started.")
    attrition = number(row.get("attrition_pct"))
    if attrition is not None and attrition >= 20:
        found.append(f"{attrition:.0f}% of pupils have no result, which makes the figure less certain.")
    lo, hi = number(row.get("ci_low")), number(row.get("ci_high"))
    if lo is not None and hi is not None and lo <= 0 <= hi:
        found.append("The difference could still be down to chance.")
    plo, phi = number(row.get("pi_low")), number(row.get("pi_high"))
    if plo is not None and phi is not None and plo < 0 < phi and not (lo is not None and lo <= 0 <= (hi or 0)):
        found.append("Some schools may see no benefit.")
    return found[:2]


def _status(row: pd.Series) -> str:
    status = "" if is_blank(row.get("status")) else str(row.get("status")).strip()
    if status in STATUS_TEXT or status == "published":
        return status
    if number(row.get("effect_size")) is None and number(row.get("months_progress")) is None:
        return "not_estimable"
    return "published"


def _expect(row: pd.Series) -> str:
    lo, hi = number(row.get("pi_low")), number(row.get("pi_high"))
    if lo is None or hi is None:
        return ""
    a, b = months(months_progress(lo)), months(months_progress(hi))
    a, b = a.replace(" months", "").replace(" month", ""), b
    return f"{a} to {b}"


EVALUATOR_FIGURES = [
    ("Effect size (Hedges' g)", "effect_size", lambda r: fmt(r.get("effect_size"))),
    ("95% confidence interval", "ci_low, ci_high", lambda r: interval(r.get("ci_low"), r.get("ci_high"))),
    ("p-value", "p_value", lambda r: p_value(r.get("p_value"))),
    ("Months of extra progress", "months_progress", lambda r: months(r.get("months_progress"))),
    ("Spread between schools (tau)", "tau", lambda r: fmt(r.get("tau"))),
    ("Variation not due to chance (I\u00b2)", "i2", lambda r: percent(r.get("i2"))),
    ("95% prediction interval (a new school)", "pi_low, pi_high", lambda r: interval(r.get("pi_low"), r.get("pi_high"))),
    ("Chance a new school benefits", "p_new_school_benefits",
     lambda r: percent(None if number(r.get("p_new_school_benefits")) is None
                       else 100 * number(r.get("p_new_school_benefits")))),
    ("Effect size, free-school-meal pupils", "fsm_effect_size", lambda r: fmt(r.get("fsm_effect_size"))),
    ("Its 95% confidence interval", "fsm_ci_low, fsm_ci_high",
     lambda r: interval(r.get("fsm_ci_low"), r.get("fsm_ci_high"))),
    ("Evidence strength", "evidence_strength",
     lambda r: "" if number(r.get("evidence_strength")) is None else f"{number(r.get('evidence_strength')):g} of 5"),
    ("Schools (with both groups)", "schools, schools_both_arms",
     lambda r: f"{whole(r.get('schools'))} ({whole(r.get('schools_both_arms'))})" if whole(r.get("schools")) else ""),
    ("Pupils randomised", "pupils_randomised", lambda r: whole(r.get("pupils_randomised"))),
    ("Pupils analysed", "pupils_analysed", lambda r: whole(r.get("pupils_analysed"))),
    ("Pupils with no result", "attrition_pct", lambda r: percent(r.get("attrition_pct"), 1)),
]


def measure_text(row: pd.Series) -> str:
    """The outcome measure as shown, a registered secondary outcome said in words:
    "Reading age (secondary outcome)". (The round is the view's own ``round``.)"""
    text = str(row["outcome_measure"])
    if str(row.get("outcome_role") or "") == "secondary":
        text += " (secondary outcome)"
    return text


def trial_view(row: pd.Series, folder: str) -> TrialView:
    """The view of one evidence-table row (after disclosure control)."""
    status = _status(row)
    notes = split_notes(row.get("notes"))
    strength = number(row.get("evidence_strength"))
    strength_int = None if strength is None else int(round(strength))
    m = number(row.get("months_progress"))
    fsm = number(row.get("fsm_months_progress"))
    if fsm is None and number(row.get("fsm_effect_size")) is not None:
        fsm = months_progress(number(row.get("fsm_effect_size")))
    cost = number(row.get("cost_rating"))
    if cost is None and not is_blank(row.get("cost_rating")) and set(str(row.get("cost_rating")).strip()) == {"\u00a3"}:
        cost = len(str(row.get("cost_rating")).strip())  # the registry's Toolkit band, "£££"
    cost_int = None if cost is None else max(1, min(5, int(round(cost))))
    pupils = number(row.get("pupils_analysed"))
    schools = number(row.get("schools"))
    suppressed = "" if is_blank(row.get("suppressed")) else str(row.get("suppressed"))
    status_text = STATUS_TEXT.get(status, "")
    if status in ("not_estimable", "not_refreshed") and notes:
        status_text = f"{status_text} {notes[0][0].upper()}{notes[0][1:]}".strip()
        if not status_text.endswith("."):
            status_text += "."
    if suppressed and status != "not_estimable":
        status_text = (status_text + " " if status_text else "") + \
            f"Figures not published: fewer than {SUPPRESSION_THRESHOLD} pupils were analysed."
    if pupils is not None:
        pupils_text = f"{int(pupils):,} pupils"
    elif number(row.get("pupils_randomised")) is None and not is_blank(row.get("schools")):
        pupils_text = f"fewer than {SUPPRESSION_THRESHOLD} pupils"
    else:
        pupils_text = ""
    return TrialView(
        folder=folder,
        intervention=str(row["intervention"]),
        outcome_measure=measure_text(row),
        status=status,
        status_text=status_text,
        description="" if is_blank(row.get("description")) else str(row.get("description")),
        months=months(m),
        months_sign="blank" if m is None else ("up" if m > 0 else "down" if m < 0 else "none"),
        fsm_months=_fsm_months(fsm, row),
        strength=strength_int,
        strength_text="" if strength_int is None else f"{strength_int} of 5",
        not_secure=strength_int is not None and strength_int <= NOT_SECURE_AT_MOST,
        cost_pounds="" if cost_int is None else "\u00a3" * cost_int,
        cost_text="" if cost_int is None else COST_WORDS[cost_int],
        national=months(row.get("national_months")),
        expect=_expect(row),
        schools="" if schools is None else f"{int(schools)} school{'s' if int(schools) != 1 else ''}",
        pupils=pupils_text,
        caveats=[] if status == "not_estimable" else _caveats(row, notes),
        notes=notes,
        suppressed=suppressed,
        evaluator_figures=[Figure(label, code, get(row)) for label, code, get in EVALUATOR_FIGURES],
        round="" if is_blank(row.get("round")) else str(row.get("round")),
        here_and_national=_here_and_national(row),
    )


def _fsm_months(fsm: float | None, row: pd.Series) -> str:
    """The free-school-meal pupils' months, never bare: with its 95% interval in months and "less
    secure" (a subgroup result, flagged as EEF reports flag them; issue 20)."""
    if fsm is None:
        return ""
    lo, hi = number(row.get("fsm_ci_low")), number(row.get("fsm_ci_high"))
    if lo is None or hi is None:
        return f"{months(fsm)} (less secure: a smaller group, interval not published)"
    return (f"{months(fsm)} (less secure: a smaller group; 95% confidence interval "
            f"{months(months_progress(lo))} to {months(months_progress(hi))})")


def _here_and_national(row: pd.Series) -> str:
    """The local estimate beside the Toolkit's national figure (``registry.local_and_national``),
    only when the registry gives a national figure; true minus signs."""
    national = number(row.get("national_months"))
    if national is None:
        return ""
    strand = None if is_blank(row.get("toolkit_strand")) else str(row.get("toolkit_strand"))
    text = local_and_national(number(row.get("effect_size")), number(row.get("ci_low")), number(row.get("ci_high")),
                              strand, int(round(national)))
    return text[0].upper() + text[1:].replace("-", MINUS) if text else ""


def fallback_view(row: pd.Series, folder: str, message: str) -> TrialView:
    """A card for a trial whose view could not be built: its name and a plain message, nothing else."""
    return TrialView(folder=folder, intervention=str(row["intervention"]), outcome_measure=measure_text(row),
                     status="", status_text="", description="", months="", months_sign="blank", fsm_months="",
                     strength=None, strength_text="", not_secure=False, cost_pounds="", cost_text="", national="",
                     expect="", schools="", pupils="", caveats=[], notes=[], suppressed="", message=message)


# --- a trial's history ------------------------------------------------------------------------

@dataclass
class PublicationPoint:
    """One publication of a trial row, worded: date, estimate, interval, months, schools, strength."""

    date: str
    effect: str
    ci: str
    months: str
    schools: str
    strength: str


@dataclass
class HistoryView:
    """How a trial row's estimate moved publication by publication, and what changed at the latest."""

    points: list[PublicationPoint]
    changes: list[str]
    alt: str
    first: bool  # the latest publication is this row's first


def history_view(rows: pd.DataFrame, changes: list[str], alt: str) -> HistoryView:
    """The view of :func:`microtrials.history.trial_history` for the trial page (oldest first)."""
    points = []
    for record in rows.to_dict("records") if len(rows) else []:
        when = pd.Timestamp(record["published_at"])
        strength = number(record.get("evidence_strength"))
        points.append(PublicationPoint(
            date=when.strftime("%d %B %Y %H:%M"),
            effect=fmt(record.get("effect_size")) or "not published",
            ci=interval(record.get("ci_low"), record.get("ci_high")) or "\u2013",
            months=months(record.get("months_progress")) or "\u2013",
            schools=whole(record.get("schools")) or "\u2013",
            strength="\u2013" if strength is None else f"{int(round(strength))} of 5",
        ))
    return HistoryView(points, [_unlabelled(c) for c in changes], alt, first=len(points) == 1)


def _unlabelled(sentence: str) -> str:
    """On the trial's own page a change needs no "Trial (outcome): " label: "School 111597 joined; ..."."""
    head, sep, rest = sentence.partition("): ")
    return rest[:1].upper() + rest[1:] if sep and rest else sentence


# --- a school --------------------------------------------------------------------------------

@dataclass
class SchoolView:
    """One row of a trial's school-by-school table."""

    urn: str
    n_intervention: str
    n_control: str
    g: str
    ci: str
    eb_g: str
    note: str


def school_views(schools: pd.DataFrame) -> list[SchoolView]:
    """The per-school rows, formatted; a one-arm school shows its note, never "none"."""
    out = []
    for _, row in schools.iterrows():
        n_i, n_c = number(row.get("n_intervention")), number(row.get("n_control"))
        note = "" if is_blank(row.get("note")) else str(row.get("note"))
        if not note and n_i is not None and n_c is not None and (n_i == 0) != (n_c == 0):
            arm, n = ("intervention", n_i) if n_c == 0 else ("control", n_c)
            note = f"one arm only ({int(n)} pupils in {arm})"
        out.append(SchoolView(
            urn=str(row["school_urn"]),
            n_intervention=whole(n_i) or "not published",
            n_control=whole(n_c) or "not published",
            g=fmt(row.get("g")) or "\u2013",
            ci=interval(row.get("ci_low"), row.get("ci_high")) or "\u2013",
            eb_g=fmt(row.get("eb_g")) or "\u2013",
            note=note,
        ))
    return out


# --- the public load report --------------------------------------------------------------------

# Words a file name may hold and still be shown: nothing in them names a pupil or a school.
NEUTRAL_WORDS = {
    "extract", "extracts", "export", "data", "results", "result", "pupils", "pupil", "trial", "trials", "round",
    "term", "autumn", "spring", "summer", "year", "final", "copy", "upload", "delivery", "file", "csv", "xlsx",
    "v", "y", "urn", "school", "new", "corrected", "resend", "resent", "fixed", "update", "updated",
}
_DATE_OR_NUMBER = re.compile(r"^(\d+|v\d+|y\d+|\d{1,2}(st|nd|rd|th)?|jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov"
                             r"|dec|january|february|march|april|june|july|august|september|october|november"
                             r"|december)$")


def public_file_name(file_name: str, trial_words: set[str]) -> str | None:
    """The file name when it is safe to publish, else None.

    Rule (documented on the load report page): a name is shown only when every word of it is a
    number, a date word, a version (``v2``), a year (``y7``), a word from ``NEUTRAL_WORDS``, or a
    word of a trial's name. Anything else (a surname, a school's name, a pupil's initials) might
    identify someone, so the name is replaced by a neutral label.
    """
    stem = re.sub(r"\.(csv|xlsx|xls|txt|tsv)$", "", str(file_name).strip(), flags=re.IGNORECASE)
    words = [w for w in re.split(r"[^a-z0-9]+", stem.casefold()) if w]
    if not words:
        return None
    for word in words:
        if not (_DATE_OR_NUMBER.match(word) or word in NEUTRAL_WORDS or word in trial_words):
            return None
    return str(file_name)
