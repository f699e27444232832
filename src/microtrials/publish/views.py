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

from microtrials.stats.effect_sizes import months_progress
from microtrials.guidance import MIN_SCHOOLS_BOTH_ARMS, SUPPRESSION_THRESHOLD
from microtrials.ingest.names import match_key
from microtrials.ingest.registry import local_and_national

MINUS = "\u2212"
NOT_SECURE_AT_MOST = 2  # padlocks: 0 to 2 are shown as "not yet secure"
PROVISIONAL_AT_MOST = 2  # an interim result shows at most this many padlocks, marked provisional
FINAL_STATUSES = ("published", "not_refreshed")  # figures of a complete round (not_refreshed: last run's)
# Baseline imbalance, |difference| in SD: below the first "very similar", to the second "a little",
# above "noticeably" (the WWC's 0.05 and the evaluators' 0.10 limits).
BALANCE_SIMILAR_BELOW, BALANCE_LITTLE_TO = 0.05, 0.10
# The Toolkit's impact words by whole months (EEF Teaching and Learning Toolkit strand headlines).
IMPACT_WORDS = ((0, "Negative impact"), (1, "Very low or no impact"), (3, "Low impact"), (6, "Moderate impact"),
                (8, "High impact"))
TOP_IMPACT = "Very high impact"
EVIDENCE_WORDS = {0: "insufficient", 1: "very limited", 2: "limited", 3: "moderate", 4: "extensive",
                  5: "very extensive"}
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
    """``21.5`` -> ``"22%"``; near the ends "more than 99%" / "less than 1%", never "100%"."""
    x = number(value)
    if x is None:
        return ""
    if x >= 99.5 or (x > 99 and digits):
        return "more than 99%"
    if 0 < x < 0.5:
        return "less than 1%"
    return f"{x:.{digits}f}%"


def chance(value: object) -> str:
    """A probability (0 to 1) in words: ``0.93`` -> ``"93%"``, ``0.999`` -> ``"more than 99%"``,
    ``0.002`` -> ``"less than 1%"`` (a fitted model is never certain, so never "100%" or "0%")."""
    x = number(value)
    if x is None:
        return ""
    if x >= 0.995:
        return "more than 99%"
    if x <= 0.005:
        return "less than 1%"
    return f"{100 * x:.0f}%"


def balance_text(difference: object) -> str:
    """How alike the groups were before the intervention, graded by the baseline difference (SD)."""
    x = number(difference)
    if x is None:
        return ""
    d = abs(x)
    if d < BALANCE_SIMILAR_BELOW:
        return f"The two groups were very similar before the intervention started (a difference of {d:.2f} SD)."
    if d <= BALANCE_LITTLE_TO:
        return f"The groups differed a little before the intervention started ({d:.2f} SD)."
    return (f"The groups differed noticeably before the intervention started ({d:.2f} SD): "
            "read the result with caution.")


_BASELINE_NOTE = re.compile(r"differed at baseline by (\d+(?:\.\d+)?) SD")


def baseline_difference(row: pd.Series, notes: list[str]) -> float | None:
    """The baseline difference: the published column, else the figure the strength note gives."""
    x = number(row.get("baseline_difference"))
    if x is not None:
        return x
    found = next((m for m in (_BASELINE_NOTE.search(n) for n in notes) if m), None)
    return float(found.group(1)) if found else None


def impact_words(months_value: int) -> str:
    """The Toolkit's impact words for whole months: "Moderate impact" for +3 to +5."""
    return next((words for below, words in IMPACT_WORDS if months_value < below), TOP_IMPACT)


def verdict(months_value: float | None, strength: int | None, cost: int | None, status: str,
            could_be_chance: bool = False) -> str:
    """One line in the Toolkit's manner: "Moderate impact for very low cost, based on limited local
    evidence." Provisional for an interim result; "No result yet." without months. When the 95%
    confidence interval includes no effect (``could_be_chance``), a month or less is "Very low or no
    impact" and more is "Unclear impact", never a firm "Negative" or "High"; so is 0 padlocks."""
    if status == "not_estimable" or months_value is None:
        return "No result yet."
    m = int(round(months_value))
    impact = impact_words(m)
    if could_be_chance:
        impact = "Very low or no impact" if abs(m) <= 1 else "Unclear impact"
    if strength == 0:
        impact = "Unclear impact"
    cost_part = f" for {COST_WORDS[cost]}" if cost else ""
    evidence = "" if strength is None else f", based on {EVIDENCE_WORDS[strength]} local evidence"
    text = f"{impact}{cost_part}{evidence}"
    return f"Provisional: {text[0].lower()}{text[1:]}, until every school has sent results." if status == "interim" \
        else f"{text}."


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
    verdict: str = ""  # "Moderate impact for very low cost, based on limited local evidence."
    provisional: bool = False  # an interim result: padlocks capped and marked provisional
    balance: str = ""  # graded words on how alike the groups were at the start
    fsm_range: str = ""  # "+4 months (−1 to +9)": the free-school-meal result with its interval
    chance_new_school: str = ""  # "93%", "more than 99%"
    changed: str = ""  # "Changed on 7 December 2026: 3 schools added" (set by the site from the history)
    round_links: list = field(default_factory=list)  # on an intervention's card/page: its rounds
    facts: list = field(default_factory=list)  # (label, text) from the registry: dates, year groups, delivery
    year_groups: str = ""  # from the registry: "Y2-Y6"


def _caveats(row: pd.Series, notes: list[str]) -> list[str]:
    """At most two caveats written for a school, most important first."""
    found = []
    both = number(row.get("schools_both_arms"))
    if both is not None and both < MIN_SCHOOLS_BOTH_ARMS:
        n = int(both)
        found.append(f"Only {n} school{'s' if n != 1 else ''} so far.")
    difference = baseline_difference(row, notes)
    if difference is not None and abs(difference) > BALANCE_LITTLE_TO:
        found.insert(0, balance_text(difference))  # noticeable imbalance comes first
    elif difference is not None and abs(difference) >= BALANCE_SIMILAR_BELOW:
        found.append(balance_text(difference))
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
    ("Chance a new school benefits", "p_new_school_benefits", lambda r: chance(r.get("p_new_school_benefits"))),
    ("Baseline difference between the groups (SD)", "baseline_difference",
     lambda r: fmt(r.get("baseline_difference"), 3)),
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


def _crosses_zero(row: pd.Series) -> bool:
    """Whether the effect's 95% confidence interval includes no effect."""
    lo, hi = number(row.get("ci_low")), number(row.get("ci_high"))
    return lo is not None and hi is not None and lo <= 0 <= hi


def _cost(row: pd.Series) -> int | None:
    """The Toolkit cost band 1-5: the number, or the registry's "£££"."""
    cost = number(row.get("cost_rating"))
    text = "" if is_blank(row.get("cost_rating")) else str(row.get("cost_rating")).strip()
    if cost is None and text and set(text) == {"\u00a3"}:
        cost = len(text)
    return None if cost is None else max(1, min(5, int(round(cost))))


def _status_text(status: str, notes: list[str], suppressed: str) -> str:
    text = STATUS_TEXT.get(status, "")
    if status in ("not_estimable", "not_refreshed") and notes:
        text = f"{text} {notes[0][0].upper()}{notes[0][1:]}".strip()
        if not text.endswith("."):
            text += "."
    if suppressed and status != "not_estimable":
        text = (text + " " if text else "") + f"Figures not published: fewer than {SUPPRESSION_THRESHOLD} pupils were analysed."
    return text


def _pupils_text(row: pd.Series) -> str:
    """"1,234 pupils"; "fewer than 10 pupils" only when the figures are blanked for it; otherwise a
    blanked count says so in the words of every blank (a small group, or blanked to protect one),
    which imply no size."""
    pupils = number(row.get("pupils_analysed"))
    if pupils is not None:
        return f"{int(pupils):,} pupils"
    if is_blank(row.get("schools")):
        return ""
    if not is_blank(row.get("suppressed")):
        return f"fewer than {SUPPRESSION_THRESHOLD} pupils"
    return f"number of pupils not published: a group under {SUPPRESSION_THRESHOLD} pupils, or blanked to protect one"


def _fsm(row: pd.Series) -> tuple[float | None, str]:
    """The free-school-meal result in months, and with its 95% interval in months: "+4 months (−1 to +9)"."""
    fsm = number(row.get("fsm_months_progress"))
    g = number(row.get("fsm_effect_size"))
    if fsm is None and g is not None:
        fsm = months_progress(g)
    lo, hi = number(row.get("fsm_ci_low")), number(row.get("fsm_ci_high"))
    if fsm is None:
        return None, ""
    if lo is None or hi is None:
        return fsm, months(fsm)
    low = months(months_progress(lo)).replace(" months", "").replace(" month", "")
    high = months(months_progress(hi)).replace(" months", "").replace(" month", "")
    return fsm, f"{months(fsm)} ({low} to {high})"


def shown_strength(strength: object, status: object) -> int | None:
    """The one definition of the evidence strength as published in words (pages, what changed, the
    run log): whole padlocks, an interim (provisional) result's capped at ``PROVISIONAL_AT_MOST``."""
    value = number(strength)
    if value is None:
        return None
    shown = int(round(value))
    return min(shown, PROVISIONAL_AT_MOST) if str(status).strip() == "interim" else shown


def _strength(row: pd.Series, status: str) -> tuple[int | None, str]:
    """Padlocks as shown (:func:`shown_strength`)."""
    shown = shown_strength(row.get("evidence_strength"), status)
    return (None, "") if shown is None else (shown, f"{shown} of 5")


def trial_view(row: pd.Series, folder: str) -> TrialView:
    """The view of one evidence-table row (after disclosure control)."""
    status = _status(row)
    notes = split_notes(row.get("notes"))
    strength_int, strength_text = _strength(row, status)
    m = number(row.get("months_progress"))
    fsm, fsm_range = _fsm(row)
    cost_int = _cost(row)
    schools = number(row.get("schools"))
    suppressed = "" if is_blank(row.get("suppressed")) else str(row.get("suppressed"))
    return TrialView(
        folder=folder,
        intervention=str(row["intervention"]),
        outcome_measure=measure_text(row),
        status=status,
        status_text=_status_text(status, notes, suppressed),
        description="" if is_blank(row.get("description")) else str(row.get("description")),
        months=months(m),
        months_sign="blank" if m is None else ("up" if m > 0 else "down" if m < 0 else "none"),
        fsm_months=months(fsm),
        strength=strength_int,
        strength_text=strength_text,
        not_secure=strength_int is not None and strength_int <= NOT_SECURE_AT_MOST,
        cost_pounds="" if cost_int is None else "\u00a3" * cost_int,
        cost_text="" if cost_int is None else COST_WORDS[cost_int],
        national=months(row.get("national_months")),
        expect=_expect(row),
        schools="" if schools is None else f"{int(schools)} school{'s' if int(schools) != 1 else ''}",
        pupils=_pupils_text(row),
        caveats=[] if status == "not_estimable" else _caveats(row, notes),
        notes=notes,
        suppressed=suppressed,
        evaluator_figures=[Figure(label, code, get(row)) for label, code, get in EVALUATOR_FIGURES],
        round="" if is_blank(row.get("round")) else str(row.get("round")),
        here_and_national=_here_and_national(row),
        verdict="" if suppressed and m is None else verdict(m, strength_int, cost_int, status, _crosses_zero(row)),
        provisional=status == "interim",
        balance="" if status == "not_estimable" else balance_text(baseline_difference(row, notes)),
        fsm_range=fsm_range,
        chance_new_school=chance(row.get("p_new_school_benefits")),
    )


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
    reason: str = ""  # why the figures changed: "3 schools added", "a school's corrected file", ...
    day: str = ""  # "1 November 2026"


@dataclass
class HistoryView:
    """How a trial row's estimate moved publication by publication, and what changed at the latest."""

    points: list[PublicationPoint]
    changes: list[str]
    alt: str
    first: bool  # the latest publication is this row's first
    changed_on: str = ""  # "Changed on 7 December 2026: 3 schools added" when the latest publication changed it
    changed_now: bool = False  # the latest publication made the last point


def history_view(rows: pd.DataFrame, changes: list[str], alt: str, changed_now: bool = False) -> HistoryView:
    """The view of :func:`microtrials.publish.history.trial_history` for the trial page (oldest first);
    ``changed_now``: the latest publication made its last point."""
    points = []
    for record in rows.to_dict("records") if len(rows) else []:
        when = pd.Timestamp(record["published_at"])
        strength = shown_strength(record.get("evidence_strength"), record.get("status"))
        points.append(PublicationPoint(
            date=when.strftime("%d %B %Y %H:%M"),
            effect=fmt(record.get("effect_size")) or "not published",
            ci=interval(record.get("ci_low"), record.get("ci_high")) or "\u2013",
            months=months(record.get("months_progress")) or "\u2013",
            schools=whole(record.get("schools")) or "\u2013",
            strength="\u2013" if strength is None else f"{strength} of 5",
            reason="" if is_blank(record.get("reason")) else str(record.get("reason")),
            day=day(when),
        ))
    changed_on = ""
    if changed_now and len(points) >= 2:
        when = pd.Timestamp(rows["published_at"].iloc[-1])
        changed_on = f"Changed on {when.day} {when.strftime('%B %Y')}: {points[-1].reason}"
    return HistoryView(points, [_unlabelled(c) for c in changes], alt, first=len(points) == 1, changed_on=changed_on,
                       changed_now=changed_now)


def _unlabelled(sentence: str) -> str:
    """On the trial's own page a change needs no "Trial (outcome): " label: "School 111597 joined; ..."."""
    head, sep, rest = sentence.partition("): ")
    return rest[:1].upper() + rest[1:] if sep and rest else sentence


# --- a school --------------------------------------------------------------------------------

@dataclass
class SchoolView:
    """One row of a trial's school-by-school table."""

    round: str
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
            round="" if is_blank(row.get("school_round")) else str(row.get("school_round")),
            urn=str(row["school_urn"]),
            n_intervention=whole(n_i) or "not published",
            n_control=whole(n_c) or "not published",
            g=fmt(row.get("g")) or "\u2013",
            ci=interval(row.get("ci_low"), row.get("ci_high")) or "\u2013",
            eb_g=fmt(row.get("eb_g")) or "\u2013",
            note=note,
        ))
    return out


# --- the registered plan, the rounds of an intervention ----------------------------------------

@dataclass
class Fact:
    """One fact about a trial from its registered plan: label, words, and a link when there is one."""

    label: str
    text: str
    href: str = ""


@dataclass
class RoundLink:
    """One round of an intervention, for its card and its cumulative page."""

    folder: str
    round: str
    months: str
    strength_text: str
    schools: str
    provisional: bool
    dates: str = ""


def day(value: object) -> str:
    """A date as people write it: "8 September 2025"; "" when blank."""
    if is_blank(value):
        return ""
    return f"{pd.Timestamp(value).day} {pd.Timestamp(value).strftime('%B %Y')}"


def round_dates(trial_round: object) -> str:
    """"8 September 2025 to 19 December 2025", or "from 8 September 2025 (no end date yet)"."""
    start, end = day(getattr(trial_round, "start_date", None)), day(getattr(trial_round, "end_date", None))
    if not start:
        return ""
    return f"{start} to {end}" if end else f"from {start} (no end date yet)"


def plan_anchor(intervention: str, round_name: str) -> str:
    """The id of a round's section on the registered-plans page."""
    text = re.sub(r"[^a-z0-9]+", "-", f"{intervention} {round_name}".casefold()).strip("-")
    return f"plan-{text or 'trial'}"


def registry_facts(rounds: list, round_name: str, root: str = "../") -> list[Fact]:
    """What the registry states about a published row: round dates, registration date, year groups,
    how it is delivered, by whom, whom to ask, and a link to the registered plan. ``rounds`` are the
    intervention's registered rounds; ``round_name`` the row's round ("all rounds": every round)."""
    if not rounds:
        return []
    cumulative = match_key_text(round_name) == "all rounds"
    chosen = [r for r in rounds if match_key_text(r.round) == match_key_text(round_name)] or rounds[-1:]
    shown = rounds if cumulative else chosen
    facts = [Fact("Round dates" if len(shown) == 1 else "Rounds",
                  "; ".join(f"{r.round + ': ' if len(shown) > 1 and r.round else ''}{round_dates(r)}" for r in shown))]
    registered = [r.registered_on for r in shown if r.registered_on is not None]
    if registered:
        facts.append(Fact("Plan registered", f"{day(min(registered))}, before results arrived"
                          if all(r.registered_on <= r.start_date for r in shown) else day(min(registered))))
    latest = shown[-1]
    for label, value in (("Year groups", latest.year_groups), ("How it is delivered", latest.dosage),
                         ("Delivered by", latest.delivered_by), ("Whom to ask in the network", latest.contact)):
        if value:
            facts.append(Fact(label, value))
    facts.append(Fact("The registered plan", "as registered, before results arrived" if registered else "as registered",
                      f"{root}registered-plans.html#{plan_anchor(latest.intervention, latest.round)}"))
    return facts


def match_key_text(text: object) -> str:
    """Names compared as the project compares them (case, spacing, Unicode form)."""
    return match_key("" if is_blank(text) else str(text))


def plan_view(trial_round: object, withdrawn: int = 0) -> dict:
    """One registry row as the registered-plans page shows it: the officer's words, planned schools
    as a number (a school that later leaves is not named: ``withdrawn`` of them are counted as
    "since withdrawn" beside it, the plan itself unchanged), never anything about a pupil."""
    r = trial_round
    planned = str(len(r.schools)) + (f" ({withdrawn} since withdrawn)" if withdrawn else "")
    rows = [("Intervention", r.intervention), ("Round", r.round), ("Primary outcome", r.outcome_measure),
            ("Secondary outcomes", ", ".join(r.secondary_outcomes)), ("Round dates", round_dates(r)),
            ("Registered on", day(r.registered_on)), ("Schools planned", planned),
            ("Year groups", r.year_groups), ("What it is", r.description), ("How it is delivered", r.dosage),
            ("Delivered by", r.delivered_by), ("Whom to ask", r.contact), ("Toolkit strand", r.toolkit_strand or ""),
            ("National Toolkit figure", months(r.national_months)),
            ("Cost per pupil per year", "" if r.cost_per_pupil is None else f"\u00a3{r.cost_per_pupil:,.0f}")]
    return {"anchor": plan_anchor(r.intervention, r.round), "title": f"{r.intervention}{', ' + r.round if r.round else ''}",
            "rows": [(label, text) for label, text in rows if text]}
