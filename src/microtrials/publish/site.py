"""The "What works" publication: pages from Jinja2 templates, CSVs, workbooks, forest plots, a preview server.

``build_site`` returns every file of the publication as ``{relative path: bytes}``; hand it to
``microtrials.publish.publish.publish_folder`` to write it atomically. Python prepares plain view objects
(numbers already formatted for people, ``microtrials.publish.views``); the templates in ``templates/``
only lay them out, with Jinja2 autoescaping every value. The pages:

- work offline from the folder (relative links only, no scripts, no external fonts or styles) and
  carry a Content-Security-Policy that forbids scripts;
- are mobile first: one column of cards that widens into a grid; tables stack into label/value
  blocks below 48rem (a phone, or a laptop at 200% zoom);
- publish only columns the data dictionary describes, after disclosure control
  (``microtrials.publish.disclosure``): no pupil identifier, no small count recoverable by subtraction;
- isolate trials: one trial's page or plot failing gives that trial a plain message, never a
  failed publication.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import re
import unicodedata
from dataclasses import dataclass
from datetime import date
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from collections.abc import Iterable
from typing import NamedTuple

import matplotlib
import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup, escape

from microtrials import workspace
from microtrials.publish import dictionary
from microtrials.publish import disclosure
from microtrials.publish import history
from microtrials.publish import views
from microtrials.publish import gate as publication_gate
from microtrials.publish.gate import Origin
from microtrials.errors import MicrotrialsError
from microtrials.publish.evidence_table import COLUMNS as EVIDENCE_COLUMNS
from microtrials.guidance import SUPPRESSION_THRESHOLD
from microtrials.ingest.names import match_key
from microtrials.publish.history import as_registered
from microtrials.publish.plots import describe, forest_plot
from microtrials.publish.publish import csv_bytes, suppress_small_groups
from microtrials.ingest.registry import CUMULATIVE_ROUND, FILE_NAME, Registry, unnamed_unregistered_text
from microtrials.publish.workbooks import table_xlsx, template_xlsx

#: Column names that could hold a pupil identifier; never published.
PUPIL_IDENTIFIER = re.compile(r"^(pupil|pupil_?(id|key|ref|reference|hash|name)|upn|pseudonym.*|name|dob|date_of_birth)$",
                              re.IGNORECASE)
# Counts that stay published when a trial is small (they say why its figures are blank).
EVIDENCE_COUNTS = ["schools", "schools_both_arms", "pupils_randomised", "pupils_analysed", "attrition_pct"]
TEXT_COLUMNS = {"intervention", "outcome_measure", "status", "notes", "round", "toolkit_strand", "description",
                "suppressed", "outcome_role", "cost_rating", "school_round"}
SCHOOL_PUBLISHED = ["school_urn", "school_round", "n_intervention", "n_control", "g", "ci_low", "ci_high", "eb_g",
                    "note"]
# Scripts are never needed; forbidding them stops injected markup from running even if escaping failed.
# (No default-src/img-src: Chrome does not treat file:// as 'self', and the pages must work offline.)
CSP = "script-src 'none'; object-src 'none'; base-uri 'none'; form-action 'none'"
SLUG_PART = 50
# BRIEF decision 3: the contract's order, then the extra and registry columns.
EVIDENCE_ORDER = [
    "intervention", "outcome_measure", "schools", "schools_both_arms", "pupils_randomised", "pupils_analysed",
    "attrition_pct", "effect_size", "ci_low", "ci_high", "p_value", "months_progress", "tau", "i2", "pi_low",
    "pi_high", "status", "p_new_school_benefits", "fsm_effect_size", "fsm_ci_low", "fsm_ci_high",
    "evidence_strength", "notes", "fsm_months_progress", "round", "outcome_role", "toolkit_strand", "national_months",
    "cost_per_pupil", "cost_rating", "description",
]


@dataclass(frozen=True)
class SortView:
    """One pre-rendered sort order of the trials."""

    file: str
    column: str
    label: str
    descending: bool


SORT_VIEWS = (
    SortView("index.html", "months_progress", "months of progress, most first", True),
    SortView("by-strength.html", "evidence_strength", "evidence strength, strongest first", True),
    SortView("by-name.html", "intervention", "name, A to Z", False),
)


def trial_slug(intervention: str, outcome_measure: str, round_name: str | None = None) -> str:
    """A safe lowercase folder name for a trial: ``<intervention>--<outcome-measure>``, and
    ``--<round>`` for one round of an intervention published in several rows.

    Letters are folded to ASCII, anything else becomes ``-``; each part is at most 50 characters.
    Two different trials can share this base name ("Maths: mastery" / "Maths mastery");
    ``trial_folders`` then adds a short hash.
    """
    def part(text: str) -> str:
        ascii_text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii")
        cleaned = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
        return cleaned[:SLUG_PART].strip("-") or "trial"
    base = f"{part(intervention)}--{part(outcome_measure)}"
    return f"{base}--{part(round_name)}" if round_name else base


def _trial_hash(*names: str) -> str:
    exact = "\x1f".join(names).encode("utf-8")
    return hashlib.sha256(exact).hexdigest()[:8]


def page_names(table: pd.DataFrame) -> list[tuple[str, ...]]:
    """What each evidence-table row's folder is named from: (intervention, outcome_measure), plus
    the round when the intervention and outcome have several rows (its rounds) -- the cumulative
    ``all rounds`` row keeps the plain name, so an intervention's main page stays where it was."""
    pairs = list(zip(table["intervention"].astype(str), table["outcome_measure"].astype(str), strict=True))
    rounds = table["round"] if "round" in table.columns else pd.Series([None] * len(table), index=table.index)
    counts: dict[tuple[str, str], int] = {}
    for i, o in pairs:
        counts[(match_key(i), match_key(o))] = counts.get((match_key(i), match_key(o)), 0) + 1
    names: list[tuple[str, ...]] = []
    for (i, o), r in zip(pairs, rounds, strict=True):
        several = counts[(match_key(i), match_key(o))] > 1
        if several and not views.is_blank(r) and match_key(str(r)) != match_key("all rounds"):
            names.append((i, o, str(r)))
        else:
            names.append((i, o))
    return names


def trial_folders(trials: list[tuple[str, ...]]) -> tuple[list[str], list[str]]:
    """Each trial's folder name, and plain messages about names that had to be told apart.

    A trial is (intervention, outcome_measure) or, with a registry, (intervention,
    outcome_measure, round); a round adds ``--<round>`` to the folder name.

    A trial whose base name (``trial_slug``) is unique keeps it; trials sharing one get
    ``-<first 8 hex of sha256(intervention, outcome_measure)>`` appended, so every trial
    keeps a page. Names equal apart from capitals, spaces or Unicode form are one trial by the
    project's naming rule (``names.match_key``): they are still published apart, with a message.
    """
    bases = [trial_slug(*t) for t in trials]
    counts: dict[str, int] = {}
    for base in bases:
        counts[base] = counts.get(base, 0) + 1
    folders, messages, seen = [], [], {}
    for names, base in zip(trials, bases, strict=True):
        folder = base if counts[base] == 1 else f"{base}-{_trial_hash(*names)}"
        if folder in seen:  # the very same names twice: number them so nothing is overwritten
            folder = f"{folder}-{len(seen)}"
        seen[folder] = names
        folders.append(folder)
    for base, n in counts.items():
        if n < 2:
            continue
        names = [t for t, b in zip(trials, bases, strict=True) if b == base]
        shown = " and ".join(" / ".join(f"'{n}'" for n in t) for t in names)
        if len({tuple(match_key(n) for n in t) for t in names}) < len(names):
            messages.append(f"trials {shown} differ only in capitals, spaces or accents, so they are one trial "
                            "by the naming rule: correct the spelling in the extracts; published apart for now")
        else:
            messages.append(f"trials {shown} would share the folder name {base!r} (their names differ only in "
                            "punctuation, accents or after the first 50 characters): each got a short code "
                            "added to its folder name")
    return folders, messages


# --- the template environment -----------------------------------------------------------------

@functools.cache
def _environment() -> Environment:
    env = Environment(loader=PackageLoader("microtrials.publish", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.globals.update(csp=CSP, threshold=SUPPRESSION_THRESHOLD, provisional_cap=views.PROVISIONAL_AT_MOST)
    env.filters["long_tokens"] = long_tokens
    return env


LONG_TOKEN = 20


def long_tokens(text: object) -> Markup:
    """``text`` escaped, each run of more than ``LONG_TOKEN`` non-space characters (a file name, a
    long code) in ``<span class="token">``, the only text a table cell may break inside
    (``overflow-wrap: anywhere``); ordinary words never break inside themselves."""
    parts = re.split(r"(\S{%d,})" % (LONG_TOKEN + 1), str(text))
    return Markup("").join(Markup('<span class="token">%s</span>') % part if i % 2 else escape(part)
                           for i, part in enumerate(parts))


def render(template: str, **context: object) -> bytes:
    """A page from ``templates/<template>`` with ``context``; every value autoescaped."""
    return _environment().get_template(template).render(**context).encode("utf-8")


# --- preparing the tables ---------------------------------------------------------------------

def _drop_identifiers(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[[c for c in frame.columns if not PUPIL_IDENTIFIER.match(str(c).strip())]]


def _numeric_figures(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in TEXT_COLUMNS and c not in EVIDENCE_COUNTS]


def _prepare_evidence(evidence: pd.DataFrame, problems: list[str]) -> pd.DataFrame:
    missing = [c for c in EVIDENCE_COLUMNS if c not in evidence.columns]
    if missing:
        raise MicrotrialsError(f"the evidence table lacks columns {missing}: rebuild it with microtrials.publish.evidence_table")
    frame = _drop_identifiers(evidence)
    unknown = [c for c in frame.columns if c not in dictionary.BY_COLUMN]
    if unknown:
        problems.append(f"columns {unknown} are not in the data dictionary, so they were not published")
    known = dictionary.known(frame.columns)
    frame = frame[[c for c in EVIDENCE_ORDER if c in known] + [c for c in known if c not in EVIDENCE_ORDER]].copy()
    if "suppressed" in frame.columns:
        frame = frame.drop(columns="suppressed")
    if "notes" in frame.columns:  # a count of pupils in a note is a published count too
        frame["notes"] = frame["notes"].map(disclosure.without_pupil_counts)
    frame = frame.sort_values(["intervention", "outcome_measure"], kind="stable").reset_index(drop=True)
    for column in _numeric_figures(frame):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame = suppress_small_groups(frame, ["pupils_analysed"], _numeric_figures(frame))
    frame["suppressed"] = frame["suppressed"].map(
        lambda s: f"fewer than {SUPPRESSION_THRESHOLD} pupils analysed" if s else "")
    # A not_estimable row has no figures to suppress: say nothing about small groups there.
    if "status" in frame.columns:
        frame.loc[frame["status"].astype(str) == "not_estimable", "suppressed"] = ""
    rows = [disclosure.protect_totals(r) for r in frame.to_dict("records")]
    return pd.DataFrame(rows, columns=frame.columns).astype(
        {c: "Int64" for c in ("schools", "schools_both_arms", "pupils_randomised", "pupils_analysed")
         if c in frame.columns})


def published_table(evidence: pd.DataFrame, schools: dict[tuple[str, ...], pd.DataFrame] | None = None,
                    previous: dict[tuple, float] | None = None) -> pd.DataFrame:
    """The evidence table exactly as ``evidence_table.csv`` publishes it (columns the dictionary
    describes, in order, after disclosure control): what the evidence history keeps."""
    return protected_publication(evidence, schools or {}, previous)[0]


def _prepare_schools(schools: pd.DataFrame | None) -> tuple[pd.DataFrame, list[str]]:
    if schools is None or schools.empty:
        return pd.DataFrame(columns=SCHOOL_PUBLISHED + ["suppressed"]), []
    if schools.attrs.get(PROTECTED):  # already through protected_publication
        blanked = schools["suppressed"].fillna("").astype(str) != ""
        return schools, sorted(schools.loc[blanked, "school_urn"].astype(str))
    frame = _drop_identifiers(schools).copy()
    for column in SCHOOL_PUBLISHED:
        if column not in frame.columns:
            frame[column] = None if column == "note" else math.nan
    frame = frame[SCHOOL_PUBLISHED].copy()
    frame["school_urn"] = frame["school_urn"].astype(str)
    frame = frame.sort_values("school_urn", kind="stable").reset_index(drop=True)
    return disclosure.protect_schools(frame)


# --- disclosure control across the publication and over time -----------------------------------

PROTECTED, SINGLE_SCHOOL, UNPUBLISHED = "microtrials_protected", "microtrials_single_school", "microtrials_unpublished"
COUNT_CELLS = ("pupils_analysed", "pupils_randomised")
LOST = "pupils lost"  # randomised less analysed: never published, a group of pupils all the same
SCHOOL_CELLS = ("n_intervention", "n_control")


def _row_key(row: dict | pd.Series) -> tuple[str, str, str]:
    """An evidence row's identity across tables and publications: its names' match keys."""
    return tuple(match_key("" if views.is_blank(row.get(c)) else str(row.get(c)))  # type: ignore[return-value]
                 for c in ("intervention", "outcome_measure", "round"))


def _school_key(row_key: tuple, school: dict | pd.Series) -> tuple:
    return (*row_key, str(school.get("school_urn")),
            match_key("" if views.is_blank(school.get("school_round")) else str(school.get("school_round"))))


def _linked_cells(table: pd.DataFrame, raw: dict[tuple, dict], per_school: list[pd.DataFrame],
                  raw_schools: list[pd.DataFrame | None]) -> disclosure.Linked:
    """Every pupil count behind the publication with its true value, published or not (a one-school
    row's school, whose figures are the row's, publishes no school row), and every sum that holds
    between them: randomised = analysed + lost, each row's analysed total over its schools, an
    intervention's all-rounds row over its rounds; a school is one count in every table showing it."""
    linked = disclosure.Linked()
    keys = [_row_key(r) for r in table.to_dict("records")]
    for position, key in enumerate(keys):
        shown = table.iloc[position]
        for column in COUNT_CELLS:
            if column in table.columns:
                linked.add((*key, column), raw.get(key, {}).get(column), ("E", key, column),
                           views.is_blank(shown[column]))
        # randomised = analysed + pupils lost (never published): a loss of 1 to 9 must not be had by subtraction
        true = raw.get(key, {})
        lost = disclosure.as_count(true.get("pupils_randomised")) - disclosure.as_count(true.get("pupils_analysed"))
        linked.add((*key, LOST), lost)
        linked.relations.append(disclosure.Relation((*key, "pupils_randomised"), [(*key, "pupils_analysed"),
                                                                                  (*key, LOST)], prefer_total=True))
        _school_cells(linked, key, per_school[position], raw_schools[position])
    cumulative = match_key(CUMULATIVE_ROUND)
    for key in keys:
        if key[2] == cumulative:
            rounds = [k for k in keys if k[:2] == key[:2] and k[2] not in ("", cumulative)]
            for column in (*COUNT_CELLS, LOST):
                linked.relations.append(disclosure.Relation((*key, column), [(*k, column) for k in rounds]))
    # Two outcome measures of one intervention and round usually count the same pupils randomised:
    # where they do, an attacker may take one for the other (its randomised less the other's analysed).
    same: dict[tuple, list[tuple]] = {}
    for key in keys:
        randomised = linked.values.get((*key, "pupils_randomised"), math.nan)
        if not math.isnan(randomised):
            same.setdefault((key[0], key[2], randomised), []).append((*key, "pupils_randomised"))
    for cells in same.values():
        linked.relations += [disclosure.Relation(a, [b]) for a, b in itertools.pairwise(cells)]
    _same_pupils_across_outcomes(linked)
    return linked


def _same_pupils_across_outcomes(linked: disclosure.Linked) -> None:
    """A school's arm (or a row's pupils analysed) for two outcome measures of one intervention and
    round counts (an attacker assumes) the same pupils, less those missing one score or row: the
    larger count is the smaller plus a group of pupils (20 analysed for maths, 17 for reading: 3
    pupils with no reading score; 100 and 96 in all: 4)."""
    arms: dict[tuple, list[tuple]] = {}
    for var, value in linked.values.items():
        if math.isnan(value) or var[0] == "differs":
            continue
        if len(var) == 6 and var[5] in SCHOOL_CELLS:
            arms.setdefault((var[0], var[2], var[3], var[5]), []).append(var)
        elif len(var) == 4 and var[3] == "pupils_analysed":
            arms.setdefault((var[0], var[2], var[3]), []).append(var)
    for cells in arms.values():
        if len({c[1] for c in cells}) > 1:
            ordered = sorted(cells, key=lambda c: (-linked.values[c], c))
            linked.relations += [disclosure.Relation(a, [b]) for a, b in itertools.pairwise(ordered)]


def _school_cells(linked: disclosure.Linked, key: tuple, published: pd.DataFrame, source: pd.DataFrame | None) -> None:
    """One row's school counts (published in its schools.csv, or not published at all) and its
    analysed total as their sum. A school's count is one variable in its round's table and in the
    all-rounds table (keyed as its round's table keys it), unless the two differ."""
    if source is None or not len(source):
        return
    shown = {_school_key(key, s): s for s in published.to_dict("records")}
    parts = []
    for school in source.to_dict("records"):
        skey = _school_key(key, school)
        row = ("S", skey) if skey in shown else None
        arms = len(parts)
        for column in SCHOOL_CELLS:
            var = (key[0], key[1], skey[4], skey[3], skey[4], column)
            value = disclosure.as_count(school.get(column))
            if var in linked.values and linked.values[var] != value and not (
                    math.isnan(value) and math.isnan(linked.values[var])):
                var = ("differs", *skey, column)  # not the same pupils as its round's table: a sum
                linked.relations.append(disclosure.Relation(var, [(key[0], key[1], skey[4], skey[3], skey[4], column)]))
            linked.add(var, value, row, row is not None and views.is_blank(shown[skey].get(column)), key=(*skey, column))
            parts.append(var)
        linked.groups.setdefault(tuple(parts[arms:]))  # the school's pupils analysed: a group no table shows
    linked.relations.append(disclosure.Relation((*key, "pupils_analysed"), parts))


class Protected(NamedTuple):
    """A publication after disclosure control: its evidence table, each row's per-school table, and
    what the next publication's audit needs of it (``disclosure.state``: kept privately)."""

    table: pd.DataFrame
    per_school: list[pd.DataFrame]
    state: dict


def protected_publication(evidence: pd.DataFrame, schools: dict[tuple[str, ...], pd.DataFrame],
                          previous: dict[tuple, float] | None = None, problems: list[str] | None = None,
                          earlier: list[dict] | None = None) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """The evidence table and each row's per-school table as published (:func:`protection`)."""
    protected = protection(evidence, schools, previous, problems, earlier)
    return protected.table, protected.per_school


def protection(evidence: pd.DataFrame, schools: dict[tuple[str, ...], pd.DataFrame],
               previous: dict[tuple, float] | None = None, problems: list[str] | None = None,
               earlier: list[dict] | None = None) -> Protected:
    """The publication after disclosure control over all its tables together, against ``previous``
    (:func:`previous_counts`) and the ``earlier`` publication's counts and sums (its ``state``): no
    difference between any published counts, in this publication or between it and the last, gives
    back a group of 1 to 9 pupils (``disclosure.link``; docs/methods.md, "Disclosure control")."""
    problems = [] if problems is None else problems
    table = _prepare_evidence(evidence, problems)
    raw = {_row_key(r): r for r in evidence.to_dict("records")}
    raw_schools = [_schools_of(schools, table.iloc[i]) for i in range(len(table))]
    per_school = []
    for source in raw_schools:
        frame, _ = _prepare_schools(source)
        frame = frame.copy()
        frame.attrs[SINGLE_SCHOOL] = source is not None and len(source) == 1
        if frame.attrs[SINGLE_SCHOOL]:
            frame.attrs[UNPUBLISHED] = [str(u) for u in source["school_urn"]]
        per_school.append(frame)
    linked = _linked_cells(table, raw, per_school, raw_schools)
    previous, earlier = rounds_named(linked, previous, earlier)
    blanked, unprotected = disclosure.link(linked, previous, earlier=earlier)
    if unprotected:
        problems.append(f"disclosure control: {len(unprotected)} count(s) or sum(s) could not be protected")
    for position, key in enumerate(_row_key(r) for r in table.to_dict("records")):
        hidden = [c for c in COUNT_CELLS if (*key, c) in blanked]
        for column in hidden + (["attrition_pct"] if hidden else []):
            if column in table.columns:
                table.at[position, column] = pd.NA if str(table[column].dtype) == "Int64" else math.nan
        frame = per_school[position]
        hide = [i for i, school in enumerate(frame.to_dict("records"))
                if (*_school_key(key, school), SCHOOL_CELLS[0]) in blanked]
        frame = per_school[position] = disclosure.blank_rows(frame, hide)
        frame.attrs[PROTECTED] = True
    return Protected(table, per_school, disclosure.state(linked, blanked))


def published_schools(table: pd.DataFrame, per_school: list[pd.DataFrame]) -> pd.DataFrame:
    """(intervention, outcome_measure, round, school_urn, blanked) of every school of every published
    row: what the evidence history keeps, so "what changed" names no school whose figures are blanked."""
    rows = []
    for position, frame in enumerate(per_school):
        row = table.iloc[position]
        blanked = (frame["suppressed"].fillna("").astype(str) != "") if "suppressed" in frame else [False] * len(frame)
        schools = list(zip(frame["school_urn"].astype(str), map(bool, blanked), strict=True))
        schools += [(urn, True) for urn in frame.attrs.get(UNPUBLISHED, [])]  # a one-school trial's school
        rows += [{"intervention": row["intervention"], "outcome_measure": row["outcome_measure"],
                  "round": _round_of(row), "school_urn": urn, "blanked": hidden} for urn, hidden in schools]
    return pd.DataFrame(rows, columns=["intervention", "outcome_measure", "round", "school_urn", "blanked"])


def with_published_counts(results: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """``results`` (trial_results) with each row's pupil counts as published (blank where blanked)."""
    shown = {_row_key(r): r for r in published.to_dict("records")}
    out = results.copy()
    for column in COUNT_CELLS:
        if column in out.columns:
            out[column] = [views.number(shown.get(_row_key(r), {}).get(column)) for r in results.to_dict("records")]
            out[column] = pd.to_numeric(out[column], errors="coerce")
    return out


def earlier_as_registered(earlier: history.Earlier, registry: Registry | None) -> history.Earlier:
    """The earlier publications' disclosure states and shown counts with each trial as the current
    registry names it (as :func:`history.as_registered` does for the history), so a trial renamed
    with its old name kept as an alias is compared with what it published under the old name. A
    name whose registered name the same state also holds (trials merged) stays as it was."""
    if registry is None or not (earlier.states or earlier.shown):
        return earlier

    def renames(keys: Iterable[tuple]) -> dict[str, str]:
        names = {_trial_of(k) for k in keys}
        moved = {n: match_key(registry.canonical(n) or n) for n in names}
        return {n: r for n, r in moved.items() if r != n and r not in names}

    def mapped(key: tuple, rename: dict[str, str]) -> tuple:
        at = 1 if key[0] == "differs" else 0
        return (*key[:at], rename.get(key[at], key[at]), *key[at + 1:])

    states = []
    for state in earlier.states:
        rename = renames(tuple(c[0]) for c in state["cells"])
        states.append({"cells": [[list(mapped(tuple(k), rename)), v, shown] for k, v, shown in state["cells"]],
                       "relations": [[list(mapped(tuple(t), rename)), [list(mapped(tuple(p), rename)) for p in parts],
                                      prefer] for t, parts, prefer in state["relations"]],
                       "groups": [[list(mapped(tuple(m), rename)) for m in g] for g in state.get("groups", [])]})
    rename = renames(earlier.shown)
    return history.Earlier({mapped(k, rename): v for k, v in earlier.shown.items()}, states)


def rounds_named(linked: disclosure.Linked, previous: dict[tuple, float] | None, earlier: list[dict] | None,
                 ) -> tuple[dict[tuple, float] | None, list[dict] | None]:
    """``previous`` and the ``earlier`` states with a trial's counts keyed by the round(s) this
    publication gives them where the registry has since named or renamed the trial's rounds: a trial
    published with no round that has named rounds now is its only round (with several: its all-rounds
    row; each school the round its pupils are in now); one round gone and one new since is the same
    round renamed. Without this, naming a single-round trial's round would unlink the last publication:
    86 - 80 = the 6 pupils of a joining school. (Linking two counts that are not the same pupils only
    blanks more.)"""
    now = _RoundsNow(linked)
    if not now.rounds:
        return previous, earlier

    def state(kept: dict) -> dict:
        move = now.mover([tuple(c[0]) for c in kept["cells"]])
        return {"cells": [[list(move(tuple(k))), v, shown] for k, v, shown in kept["cells"]],
                "relations": [[list(move(tuple(t))), [list(move(tuple(p))) for p in parts], prefer]
                              for t, parts, prefer in kept["relations"]],
                "groups": [[list(move(tuple(m))) for m in g] for g in kept.get("groups", [])]}

    if previous is not None:  # a count the last publications keyed by its round already is that one
        move = now.mover(list(previous))
        previous = {**{move(k): v for k, v in previous.items()}, **previous}
    return previous, None if earlier is None else [state(kept) for kept in earlier]


class _RoundsNow:
    """The rounds of each (trial, outcome) in this publication and the round(s) of each school in it."""

    def __init__(self, linked: disclosure.Linked) -> None:
        self.cumulative = match_key(CUMULATIVE_ROUND)
        self.rounds: dict[tuple, set[str]] = {}
        self.schools: dict[tuple, set[str]] = {}
        for var in linked.values:
            if var[0] != "differs" and len(var) == 4:
                self.rounds.setdefault(var[:2], set()).add(var[2])
            elif var[0] != "differs" and len(var) == 6:
                self.schools.setdefault((*var[:2], var[3]), set()).add(var[2])

    def mover(self, keys: list[tuple]):
        """How one earlier publication's keys (``keys``: all of them) are keyed now."""
        then: dict[tuple, set[str]] = {}
        for key in keys:
            at = 1 if key and key[0] == "differs" else 0
            if len(key) >= at + 4:
                then.setdefault(tuple(key[at:at + 2]), set()).add(key[at + 2])
        moves = {trial: self._moves(trial, found) for trial, found in then.items() if trial in self.rounds}

        def move(key: tuple) -> tuple:
            at = 1 if key and key[0] == "differs" else 0
            trial = tuple(key[at:at + 2])
            to = moves.get(trial, {}).get(key[at + 2]) if len(key) >= at + 4 else None
            if to is None:
                return tuple(key)
            rest = tuple(key[at + 3:])
            if len(rest) == 1:  # the trial's own count
                return (*key[:at], *trial, to, *rest)
            school_round = to if to != self.cumulative else self._only(self.schools.get((*trial, rest[0]), set()))
            return (*key[:at], *trial, school_round, rest[0], school_round, *rest[2:]) if school_round else tuple(key)
        return move

    def _moves(self, trial: tuple, then: set[str]) -> dict[str, str]:
        """Old round -> its round now: no round then, named now; or one round gone and one new."""
        now = self.rounds[trial] - {self.cumulative}
        gone, new = then - now - {self.cumulative}, now - then
        if "" in gone and not then - {"", self.cumulative}:
            to = self._only(now) or (self.cumulative if self.cumulative in self.rounds[trial] else None)
            return {"": to} if to else {}
        return {self._only(gone): self._only(new)} if len(gone) == 1 and len(new) == 1 else {}

    @staticmethod
    def _only(found: set[str]) -> str | None:
        return next(iter(found)) if len(found) == 1 else None


def _trial_of(key: tuple) -> str:
    return key[1] if key[0] == "differs" else key[0]


def previous_counts(out_dir: Path | None, kept: pd.DataFrame | None, registry: Registry | None = None,
                    ) -> dict[tuple, float]:
    """The counts earlier publications showed, as :func:`protected_publication` keys them: each
    evidence row's counts as last published (the evidence history, so a count blanked once stays
    compared with the value shown before it), and every school count of the publication in
    ``out_dir`` (its ``<trial>/schools.csv``). Earlier names are keyed as ``registry`` names them now
    (:func:`history.as_registered`): a trial renamed with its old name as an alias stays compared."""
    counts: dict[tuple, float] = {}
    folder = Path(out_dir) if out_dir is not None else None
    if folder is not None and (folder / "evidence_table.csv").is_file():
        try:
            shown = pd.read_csv(folder / "evidence_table.csv", encoding="utf-8-sig", dtype={"round": str})
            folders, _ = trial_folders(page_names(shown))  # the folders as published, from the names as published
            shown = history.as_registered(shown, registry)
            for row, name in zip(shown.to_dict("records"), folders, strict=True):
                _counts_of(counts, _row_key(row), row)
                path = folder / name / "schools.csv"
                if path.is_file():
                    for school in pd.read_csv(path, encoding="utf-8-sig", dtype={"school_urn": str}).to_dict("records"):
                        _counts_of(counts, _school_key(_row_key(row), school), school, SCHOOL_CELLS)
        except (OSError, ValueError, KeyError, pd.errors.ParserError):
            pass  # an unreadable earlier publication: the history still holds its evidence rows
    kept = history.as_registered(kept, registry)
    if kept is not None and len(kept):
        for publication in history.publications(kept):
            for row in publication.to_dict("records"):
                _counts_of(counts, _row_key(row), row)
    return counts


def shown_counts(table: pd.DataFrame, per_school: list[pd.DataFrame]) -> dict[tuple, float]:
    """The counts a publication shows (:func:`protected_publication`'s result), keyed as
    :func:`previous_counts` keys them: what the next publication is compared with."""
    counts: dict[tuple, float] = {}
    for row, frame in zip(table.to_dict("records"), per_school, strict=True):
        key = _row_key(row)
        _counts_of(counts, key, row)
        for school in frame.to_dict("records"):
            _counts_of(counts, _school_key(key, school), school, SCHOOL_CELLS)
    return counts


def _counts_of(counts: dict[tuple, float], key: tuple, row: dict, columns: tuple[str, ...] = COUNT_CELLS) -> None:
    for column in columns:
        value = views.number(row.get(column))
        if value is not None:
            counts[(*key, column)] = value


# --- the public load report -------------------------------------------------------------------

#: The public load report's columns (data_dictionary.csv describes each). It publishes no row counts:
#: a count per file is a count per school, and would undo the suppression of small schools'
#: figures (BRIEF; red-team finding 6). Exact counts stay in the warehouse's `load_report` table,
#: the Dagster UI and each school's private feedback file.
LOAD_COLUMNS = ["File", "School URN", "Status", "What went wrong", "Warnings", "Trials", "Columns dropped"]
#: Status words, in the order the page lists files (problems first).
LOAD_STATUS = {
    "rejected": "rejected: nothing loaded",
    "held": "held: a change waiting for the data team (the earlier rows stay)",
    "partly": "partly loaded: some rows set aside",
    "warned": "loaded, with warnings",
    "ignored": "ignored: not a school file",
    "withdrawn": "withdrawn: the school left the trial, its rows are removed",
    "replaced": "replaced by a later file from the school",
    "unchanged": "unchanged since it was last loaded",
    "loaded": "loaded",
}
_COUNTS = [  # (pattern, replacement): sentences of the loader that carry a count, said without it
    (re.compile(r"this file has \d+ loadable rows? for the trial, the school's earlier delivery \d+"),
     "this file has fewer loadable rows for the trial than the school's earlier delivery"),
    (re.compile(r"has \d+ different values in \d+ rows"), "has a different value in every row"),
    (re.compile(r"\bby \d{1,5}\b(?=, more than half)"), "by fewer"),  # a held change (change_sets)
    (re.compile(r"\bleave \d{1,5} of the \d{1,5}\b"), "leave fewer than half of the"),
    (re.compile(r"\blines? \d+(?:(?:,\s*| and | to |-)\d+)*"), "some lines"),
    (re.compile(r"\s*\(\d+\)"), ""),
    (re.compile(r":\s*\d+(?=;|$|\))"), ""),  # "rule: 3" (a count per reason)
    (re.compile(r"\b\d{1,5}\s+(?=(?:\w+\s+){0,2}(?:rows?|pupils?|values?|outcomes?|lines?)\b)"), ""),
    (re.compile(r"\b(?:of|from|to|were|was|only|has|had|with)\s+\d{1,5}\b(?![-./]\d)"), "…"),
]


def without_counts(text: str) -> str:
    """``text`` with every count of rows, pupils or values taken out ("arm not understood: 3" ->
    "arm not understood"; "71 different values in 71 rows" -> "a different value in every row")."""
    out = str(text)
    for pattern, replacement in _COUNTS:
        out = pattern.sub(replacement, out)
    return re.sub(r"\s{2,}", " ", out).strip()


def _load_status(row: dict) -> str:
    """Which of ``LOAD_STATUS`` a warehouse load-report row is (a file with rows but none loaded is
    rejected, whatever the loader called it; an unchanged file whose rows a later file replaced, or
    whose school was withdrawn, says so: column ``superseded``)."""
    def count(column: str) -> int:
        x = views.number(row.get(column))
        return 0 if x is None else int(x)
    status = str(row.get("status", "")).strip().casefold()
    if status == "rejected" or (status == "loaded" and count("rows_read") > 0 and count("rows_loaded") == 0):
        return "rejected"
    if status == "ignored":
        return "ignored"
    if status in ("held", "partly held"):
        return "held"
    superseded = "" if views.is_blank(row.get("superseded")) else str(row.get("superseded"))
    if status == "unchanged" and superseded in ("withdrawn", "replaced"):  # change_sets.superseded_files
        return superseded
    if count("rows_quarantined") or not views.is_blank(row.get("quarantined_by_reason")):
        return "partly"
    if count("rows_with_warnings") or not views.is_blank(row.get("warnings")):
        return "warned"
    return "unchanged" if status == "unchanged" else "loaded"


def _rules(text: object) -> str:
    """"arm not understood: 3; implausible value: 1" -> "arm not understood; implausible value"."""
    if views.is_blank(text):
        return ""
    return "; ".join(without_counts(part) for part in str(text).split("; ") if part.strip())

REGISTRY_REPORT_COLUMNS = ["Trial", "Round", "School URN", "What to do"]


def registry_report(messages: pd.DataFrame | None, progress: pd.DataFrame | None) -> pd.DataFrame:
    """What the officer should act on after matching deliveries to the trial registry
    (``registry_report.csv``): messages that are errors (rows not used as evidence), then
    warnings, then each round still awaiting planned schools with their URNs."""
    rows = []
    if messages is not None and len(messages):
        ordered = messages.assign(_rank=(messages["level"].astype(str) != "error").astype(int)).sort_values(
            ["_rank", "intervention", "school_urn"], kind="stable")
        for m in ordered.itertuples(index=False):
            rows.append({"Trial": m.intervention, "Round": "", "School URN": m.school_urn or "", "What to do": m.message,
                         "rule": getattr(m, "rule", "")})
    if progress is not None and len(progress):
        waiting = progress[pd.to_numeric(progress["awaited"], errors="coerce").fillna(0) > 0]
        for p in waiting.itertuples(index=False):
            note = f"{p.delivered} of {p.planned} planned schools have sent results; still awaited: {p.awaited_urns}"
            if not views.is_blank(p.status_note):
                note += f" ({p.status_note})"
            rows.append({"Trial": p.intervention, "Round": p.round, "School URN": p.awaited_urns, "What to do": note})
        rows += withdrawn_rows(progress)
    return pd.DataFrame(rows, columns=[*REGISTRY_REPORT_COLUMNS, "rule"])


def withdrawn_counts(progress: pd.DataFrame | None) -> dict[tuple[str, str], int]:
    """(match_key(intervention), match_key(round)) -> how many of the round's planned schools were
    withdrawn (table ``registry_progress``), for the registered plans page."""
    if progress is None or "withdrawn" not in progress:
        return {}
    return {(match_key(str(p.intervention)), match_key("" if views.is_blank(p.round) else str(p.round))): int(p.withdrawn)
            for p in progress.itertuples(index=False) if views.number(p.withdrawn)}


def withdrawn_rows(progress: pd.DataFrame) -> list[dict]:
    """A registry report row per round with planned schools withdrawn (``microtrials withdraw``): they
    stay in the registered plan, are no longer awaited, and nothing is to be done."""
    if "withdrawn_urns" not in progress:
        return []
    return [{"Trial": p.intervention, "Round": p.round, "School URN": p.withdrawn_urns,
             "What to do": f"withdrawn from this round by the data team: no longer awaited; the registered plan "
                           f"still counts {'it' if len(p.withdrawn_urns.split()) == 1 else 'them'}; nothing to do"}
            for p in progress.itertuples(index=False) if not views.is_blank(p.withdrawn_urns)]  # rule: the message's, not published


_QUOTED = re.compile(r"'([^']*)'")
_ROWS_FROM = re.compile(r"\b\d+ rows? from")
WITHHELD_NAME = "a name not shown here"


def gated_text(text: object, gate: publication_gate.Gate) -> str:
    """A sentence of ours that quotes delivered names ('...'), each quoted name kept only when the
    gate shows it as a trial, outcome or round name (else "a name not shown here")."""
    if views.is_blank(text):
        return ""

    def keep(match: re.Match) -> str:
        name = match.group(1)
        shown = any(gate.allows(name, origin) for origin in publication_gate.NAMES)
        return match.group(0) if shown or name in dictionary.TEMPLATE_COLUMNS else WITHHELD_NAME
    return _QUOTED.sub(keep, str(text))


def gated_registry_report(rows: pd.DataFrame, gate: publication_gate.Gate) -> pd.DataFrame:
    """:func:`registry_report` rows through the gate: a trial or round the gate does not show is left
    blank, and every quoted name in "What to do" is kept only when the gate shows it."""
    out = rows.copy()
    unnamed = out["Trial"].map(lambda v: views.is_blank(v) or not gate.allows(v, Origin.TRIAL)) \
        & (out["rule"] == "unregistered" if "rule" in out.columns else False)
    out["Trial"] = out["Trial"].map(lambda v: gate.show(v, Origin.TRIAL) or "" if not views.is_blank(v) else "")
    out["Round"] = out["Round"].map(lambda v: gate.show(v, Origin.ROUND) or "" if not views.is_blank(v) else "")
    out["School URN"] = out["School URN"].map(
        lambda v: " ".join(u for u in re.split(r"[\s,;]+", str(v)) if gate.allows(u, Origin.URN))
        if not views.is_blank(v) else "")
    officer = out["What to do"].astype(str).str.startswith(FILE_NAME)  # about trials.csv itself: the officer's text
    # no count of a school's rows either (a count of pupils): "(202 rows from schools ...)" -> "(rows from schools ...)"
    out["What to do"] = [v if own else _ROWS_FROM.sub("rows from", gated_text(v, gate))
                         for v, own in zip(out["What to do"], officer, strict=True)]
    # an unregistered name the gate withholds: said without it, with its schools (one wording, the registry's)
    out.loc[unnamed, "What to do"] = [unnamed_unregistered_text(urns.split()) for urns in out.loc[unnamed, "School URN"]]
    return out


def public_load_report(load_report: pd.DataFrame, gate: publication_gate.Gate | None = None) -> pd.DataFrame:
    """The load report as published: problem files first, plain words, no counts, no revealing names.

    One row per file: its label, school URN, status in plain words (``LOAD_STATUS``), what went
    wrong and what to do, its warnings (e.g. "read as Windows-1252"), trials and dropped columns.
    No row counts: a file's counts are its school's pupil numbers, and publishing them would undo
    the suppression of a small school's figures (a one-school pilot would show its size). Counts
    in the loader's sentences are taken out (:func:`without_counts`).

    Every string passes the publication gate (:mod:`microtrials.publish.gate`): a file name is never shown
    ("file N from school <URN>" stands in for it, in its own cell and wherever the reasons name it);
    dropped columns are counted, never named; a trial name only when ``gate`` shows it (by default
    none is).

    Order: rejected, then partly loaded, then loaded with warnings, then ignored entries, then the
    rest (each by URN and file).
    """
    gate = publication_gate.CLOSED if gate is None else gate
    frame = _drop_identifiers(load_report).copy()
    for column in ("file_name", "status", "school_urn", "trials", "quarantined_by_reason", "warnings",
                   "columns_dropped", "reason"):
        if column not in frame.columns:
            frame[column] = ""
    records = frame.to_dict("records")
    kinds = [_load_status(r) for r in records]
    order = list(LOAD_STATUS)
    ranked = sorted(range(len(records)), key=lambda i: (order.index(kinds[i]), str(records[i]["school_urn"]),
                                                        str(records[i]["file_name"])))
    rows, per_school = [], {}
    for i in ranked:
        r, kind = records[i], kinds[i]
        name = "" if views.is_blank(r["file_name"]) else str(r["file_name"])
        urn = gate.show("" if views.is_blank(r["school_urn"]) else str(r["school_urn"]).strip(), Origin.URN) or ""
        per_school[urn] = per_school.get(urn, 0) + 1
        label = publication_gate.file_label(urn, per_school[urn])
        pairs = _trial_pairs(r["trials"])
        rows.append({
            "File": label, "School URN": urn, "Status": LOAD_STATUS[kind],
            "What went wrong": _names_withheld(_what_went_wrong(r, kind, name, label), pairs, gate),
            "Warnings": _names_withheld(_unnamed(_rules(r["warnings"]), name, label), pairs, gate),
            "Trials": publication_gate.names_text(gate, pairs),
            "Columns dropped": publication_gate.dropped_columns_text(_count_dropped(r["columns_dropped"])),
        })
    return pd.DataFrame(rows, columns=LOAD_COLUMNS)


def _names_withheld(text: str, pairs: list[tuple[str, str]], gate: publication_gate.Gate) -> str:
    """``text`` (the loader's sentence about one file, which may name its trials, e.g. "not loaded:
    <intervention> / <outcome>: ..." or a held change's label) with every name of the file's trials
    that the gate does not show replaced by ``WITHHELD_NAME``, longest first."""
    hidden = {n for i, o in pairs for n, origin in ((i, Origin.TRIAL), (o, Origin.OUTCOME))
              if n.strip() and not gate.allows(n, origin)}
    for hide in sorted(hidden, key=len, reverse=True):  # in any capitals and spacing, as the loader may have them
        words = r"\s+".join(re.escape(w) for w in hide.split())
        text = re.sub(rf"(?<!\w){words}(?!\w)", WITHHELD_NAME, text, flags=re.IGNORECASE)
    return text


def _unnamed(text: str, name: str, label: str) -> str:
    """``text`` with the file's name replaced by its label (the gate never shows a file name)."""
    return text.replace(name, label) if name else text


def _what_went_wrong(r: dict, kind: str, name: str, label: str) -> str:
    reason = "" if views.is_blank(r["reason"]) else str(r["reason"])
    if name and reason.startswith(f"{name}: "):  # the File column already names it
        reason = reason[len(name) + 2:]
    parts = [without_counts(_unnamed(reason, name, label))] if reason.strip() else []
    set_aside = _rules(r["quarantined_by_reason"])
    if set_aside:
        parts.append(f"rows set aside ({set_aside}): the data team will send the school its own list of rows to fix")
    if kind == "rejected" and not reason.strip():
        parts.append("no row could be loaded: the data team will send the school its own list of rows to fix")
    return "; ".join(parts)


def _trial_pairs(text: object) -> list[tuple[str, str]]:
    """'intervention / outcome; ...' (``loading.trials_text``) back into pairs; a piece that does not
    split cleanly stays whole, so the gate judges (and withholds) it as it is."""
    if views.is_blank(text):
        return []
    pairs = []
    for part in str(text).split("; "):
        intervention, _, outcome = part.rpartition(" / ")
        pairs.append((intervention, outcome) if intervention else (part, ""))
    return pairs


def _count_dropped(text: object) -> int:
    """How many columns a load-report ``columns_dropped`` cell lists (headers joined by ", ")."""
    return 0 if views.is_blank(text) else len(str(text).split(", "))


def merged_spellings(spellings: pd.DataFrame | None, table: pd.DataFrame,
                     gate: publication_gate.Gate | None = None) -> list[str]:
    """Plain sentences for the delivered spellings analysed as another spelling of a published trial
    (table `trial_spellings`, ``merged`` true), e.g. "'reciprocal  Reading' analysed as 'Reciprocal
    reading'" (capitals, spaces or accents; or a registry alias). Only spellings analysed as a
    published trial appear: a value grouped into no published trial (which could be a stray
    identifier) is never shown, nor a spelling the publication gate withholds (``gate``; by default
    only the names of ``table`` are shown)."""
    gate = publication_gate.trusting(table) if gate is None else gate
    if spellings is None or not len(spellings) or "merged" not in spellings.columns:
        return []
    published = {(match_key(str(i)), match_key(str(o)))
                 for i, o in zip(table["intervention"], table["outcome_measure"], strict=True)}
    out: list[str] = []
    for s in spellings.itertuples(index=False):
        if not bool(s.merged) or (match_key(str(s.intervention)), match_key(str(s.outcome_measure))) not in published:
            continue
        for delivered, name, origin in ((s.delivered_intervention, s.intervention, Origin.TRIAL),
                                        (s.delivered_outcome_measure, s.outcome_measure, Origin.OUTCOME)):
            if not views.is_blank(delivered) and str(delivered) != str(name) and gate.allows(delivered, origin):
                sentence = f"'{delivered}' analysed as '{name}'"
                if sentence not in out:
                    out.append(sentence)
    return out


# --- pages -------------------------------------------------------------------------------------

def _sorted(table: pd.DataFrame, view: SortView) -> list[int]:
    """Row positions in the view's order: final results first, then provisional (interim) ones, then
    rows with no result; within each, by the view's column (blanks last), ties by months, then name.
    An interim row's strength sorts as shown (:func:`views.shown_strength`)."""
    names = ["intervention", "outcome_measure"]
    keys = list(dict.fromkeys([view.column, "months_progress", "evidence_strength", *names]))
    status = table["status"].astype(str) if "status" in table.columns else pd.Series("", index=table.index)
    columns = {"_final": status.map(lambda s: 1 if s == "interim" else 2 if s == "not_estimable" else 0)}
    for k in keys:
        if k in names:
            columns[k] = table[k].astype(str).str.casefold()
        else:
            columns[k] = pd.to_numeric(table[k], errors="coerce")
    if "evidence_strength" in columns:
        columns["evidence_strength"] = pd.to_numeric(pd.Series(
            [views.shown_strength(v, s) for v, s in zip(table["evidence_strength"], status, strict=True)],
            index=table.index, dtype=object), errors="coerce")
    ascending = [True] + [not view.descending if k == view.column else k in names for k in keys]
    sort_frame = pd.DataFrame(columns)
    return list(sort_frame.sort_values(["_final", *keys], ascending=ascending, na_position="last",
                                       kind="stable").index)


def _common(area: str, data_date: str, run_date: str, root: str) -> dict:
    return {"area": area, "data_date": data_date, "run_date": run_date, "root": root}


def _round_of(row: pd.Series) -> str | None:
    return None if views.is_blank(row.get("round")) else str(row.get("round"))


def _history_files(row: pd.Series, folder: str, kept: pd.DataFrame | None) -> tuple[dict[str, bytes], object, str]:
    """The trial row's history view and, from two publications with an estimate on, its cumulative
    plot ``<folder>/history.svg``; a failing plot costs only the figure (its message is returned)."""
    intervention, outcome = str(row["intervention"]), str(row["outcome_measure"])
    found = history.trial_history(kept, intervention, outcome, _round_of(row))
    view = views.history_view(found.rows, found.changes, found.alt, found.changed_now)
    files: dict[str, bytes] = {}
    estimates = pd.to_numeric(found.rows.get("effect_size", pd.Series(dtype=float)), errors="coerce").notna().sum()
    if estimates >= 2:
        try:
            files[f"{folder}/history.svg"] = history.cumulative_plot_svg(kept, intervention, outcome, _round_of(row))
        except Exception as exc:  # noqa: BLE001 - one plot never stops the publication
            return files, view, f"The chart of earlier publications could not be drawn this time ({type(exc).__name__})."
    return files, view, ""


PLOT_LABEL = 24


def plot_label(text: object) -> str:
    """A school's label on the forest plot: at most ``PLOT_LABEL`` characters, cut with "…" (the
    school table on the page gives it in full), so the plot never clips it."""
    text = " ".join(str(text).split())
    return text if len(text) <= PLOT_LABEL else text[: PLOT_LABEL - 1].rstrip() + "…"


def _trial_files(row: pd.Series, folder: str, schools: pd.DataFrame | None, common: dict,
                 kept: pd.DataFrame | None = None, plan: str = "", view: views.TrialView | None = None,
                 family: dict | None = None) -> dict[str, bytes]:
    """One trial's page, schools.csv, forest plot and history plot; a failing plot costs only the figure.
    ``family`` (``parent``, ``rounds``) links an intervention's cumulative page and its rounds."""
    view = view or views.trial_view(row, folder)
    per_school, blanked = _prepare_schools(schools)
    files = {f"{folder}/schools.csv": csv_bytes(per_school)}
    pooled = tuple(views.number(row.get(c)) if views.number(row.get(c)) is not None else math.nan
                   for c in ("effect_size", "ci_low", "ci_high"))
    prediction = (views.number(row.get("pi_low")), views.number(row.get("pi_high")))
    plot_alt, plot_error = "", ""
    if len(per_school) and view.status != "not_estimable":
        title = f"{row['intervention']}: {row['outcome_measure']}"
        try:
            with matplotlib.rc_context({"text.parse_math": False}):  # "$...$" in a name is text, not maths
                files[f"{folder}/forest.svg"] = forest_plot(
                    per_school.assign(school_urn=per_school["school_urn"].map(plot_label)), pooled, title,
                    prediction if None not in prediction else None)
            plot_alt = describe(per_school, pooled)
        except Exception as exc:  # noqa: BLE001 - one plot never stops the publication
            plot_error = f"The chart could not be drawn this time ({type(exc).__name__})."
    single_school = schools is not None and (len(schools) == 1 or bool(schools.attrs.get(SINGLE_SCHOOL)))
    history_files, past, history_error = _history_files(row, folder, kept)
    files.update(history_files)
    if past.changed_on:
        view.changed = past.changed_on
    files[f"{folder}/index.html"] = render(
        "trial.html", trial=view, schools=views.school_views(per_school), plot_alt=plot_alt,
        plot_error=plot_error, has_plot=f"{folder}/forest.svg" in files, single_school=single_school,
        blanked=len(blanked) if not single_school else 0, past=past, has_history_plot=f"{folder}/history.svg" in files,
        history_error=history_error, plan=plan, parent=(family or {}).get("parent", ""),
        rounds=(family or {}).get("rounds", []), **common)
    return files


def _first_views(table: pd.DataFrame, folders: list[str], registry) -> list[views.TrialView | None]:
    """Each row's view with the registry's facts; None when it fails (its page then says so)."""
    out = []
    for position, folder in enumerate(folders):
        row = table.iloc[position]
        try:
            view = views.trial_view(row, folder)
            rounds = registry.rounds_of(str(row["intervention"])) if registry is not None else []
            view.facts = views.registry_facts(rounds, view.round)
            view.year_groups = next((f.text for f in view.facts if f.label == "Year groups"), "")
        except Exception:  # noqa: BLE001 - building its page fails again and reports it
            view = None
        out.append(view)
    return out


def _failed_trial_page(row: pd.Series, folder: str, exc: Exception, common: dict) -> dict[str, bytes]:
    message = ("This trial's page could not be built in this run. Its figures are in evidence_table.csv; "
               f"the data team has been told ({type(exc).__name__}).")
    return {f"{folder}/index.html": render("trial_failed.html", intervention=str(row["intervention"]),
                                           outcome_measure=str(row["outcome_measure"]), message=message, **common)}


FORMAT_CHOICES = {"arm": ["intervention", "control"], "fsm": ["Y", "N"], "gender": ["F", "M"], "send": ["Y", "N"]}
FORMAT_HELP = [
    ("school_urn", "Your school's 6-digit URN, on every row (keep leading zeros)."),
    ("pupil_id", "Your own pupil reference (not a name). It is scrambled when it arrives and never published."),
    ("intervention", "Choose the trial's name from the list: it must match exactly."),
    ("outcome_measure", "Choose the test's name from the list."),
    ("arm", "intervention or control: the group the pupil was put in at random (choose from the list)."),
    ("outcome", "The pupil's score on the test after the intervention; leave blank if they did not sit it."),
    ("baseline", "The pupil's earlier score, if you have one; otherwise blank."),
    ("fsm", "Y if eligible for free school meals, N if not (choose from the list); blank if unknown."),
    ("gender", "F or M, or blank."),
    ("year_group", "National Curriculum year as a number; Reception is 0."),
    ("send", "Y if on the SEN register, N if not; blank if unknown."),
    ("round", "Only if your school takes part in more than one round of this trial: the round's name."),
]


def _send_files(table: pd.DataFrame, folders: list[str], names: list[tuple[str, ...]],
                common: dict, sending: dict) -> tuple[dict[str, bytes], list[dict]]:
    files, trials = {}, []
    columns = list(dictionary.TEMPLATE_COLUMNS)
    seen: set[tuple[str, str]] = set()
    for position, folder in enumerate(folders):
        row = table.iloc[position]
        intervention, outcome = str(row["intervention"]), str(row["outcome_measure"])
        if (match_key(intervention), match_key(outcome)) in seen:  # one template per trial, not per round
            continue
        seen.add((match_key(intervention), match_key(outcome)))
        # a round's folder is <trial>--<round>: the template is the trial's, without the round
        plain = next((f for f, n in zip(folders, names, strict=True) if len(n) == 2
                      and (match_key(n[0]), match_key(n[1])) == (match_key(intervention), match_key(outcome))), None)
        base = f"send/{plain or (folder.rsplit('--', 1)[0] if len(names[position]) == 3 else folder)}-template"
        files[f"{base}.csv"] = csv_bytes(pd.DataFrame(columns=columns))
        files[f"{base}.xlsx"] = template_xlsx(columns, intervention, outcome, FORMAT_CHOICES,
                                              workspace.template_notes(sending, intervention) + FORMAT_HELP)
        trials.append({"intervention": intervention, "outcome_measure": outcome,
                       "csv": f"{base}.csv", "xlsx": f"{base}.xlsx"})
    return files, trials


#: The workbook's first columns, what a head teacher looks for (the statistics follow to the right).
HEAD_COLUMNS = ["Intervention", "Measured by", "Round", "Months of extra progress", "Verdict", "Padlocks",
                "Status", "Cost"]
STATUS_WORDS = {"published": "final", "interim": "provisional: schools still to send results",
                "not_refreshed": "not updated in the latest run", "not_estimable": "no result yet"}
P_VALUE_FORMAT = '[<0.0001]"<0.0001";0.0000'


def _view_or_fallback(row: pd.Series) -> views.TrialView:
    try:
        return views.trial_view(row, "")
    except Exception:  # noqa: BLE001 - its page reports the failure; the workbook keeps its figures
        return views.fallback_view(row, "", "")


def _display_evidence(table: pd.DataFrame) -> pd.DataFrame:
    """The evidence table for people (the .xlsx): first ``HEAD_COLUMNS`` (padlocks as the pages
    show them, status and cost in words), then every other column with plain headers, rounded
    figures as numbers (p-values too: the workbook's format shows "<0.0001")."""
    shown_views = [_view_or_fallback(row) for _, row in table.iterrows()]
    out = pd.DataFrame({
        "Intervention": table["intervention"].astype(str),
        "Measured by": [v.outcome_measure for v in shown_views],
        "Round": table["round"].map(lambda v: "" if views.is_blank(v) else str(v)) if "round" in table else "",
        "Months of extra progress": table["months_progress"].map(
            lambda v: None if views.number(v) is None else int(round(views.number(v)))),
        "Verdict": [v.verdict for v in shown_views],
        "Padlocks": [v.strength for v in shown_views],
        "Status": [STATUS_WORDS.get(v.status, v.status) for v in shown_views],
        "Cost": [f"{v.cost_pounds} {v.cost_text}".strip() for v in shown_views],
    }, index=table.index)
    head = {"intervention", "outcome_measure", "round", "months_progress", "evidence_strength", "status",
            "cost_rating"}
    for column in [c for c in table.columns if c not in head]:
        values = table[column]
        if column in TEXT_COLUMNS:
            shown = values.map(lambda v: "" if views.is_blank(v) else str(v))
        elif column in ("attrition_pct", "i2"):
            shown = values.map(lambda v: views.number(v) if views.number(v) is None else round(views.number(v), 1))
        elif column == "p_value":
            shown = values.map(views.number)
        elif column == "p_new_school_benefits":
            shown = values.map(lambda v: views.number(v) if views.number(v) is None else round(views.number(v), 3))
        else:
            shown = values.map(lambda v: views.number(v) if views.number(v) is None else round(views.number(v), 2))
        out[dictionary.label(column)] = shown
    return out


def _schools_of(schools: dict[tuple[str, ...], pd.DataFrame], row: pd.Series) -> pd.DataFrame | None:
    """A row's per-school table: keys are (intervention, outcome_measure) or, once rounds are
    published, with the round too; they may use other spellings of the same trial."""
    key = (str(row["intervention"]), str(row["outcome_measure"]))
    with_round = (*key, _round_of(row) or "")
    wanted = tuple(match_key(k) for k in with_round)
    found = schools.get(with_round) if _round_of(row) else None
    if found is None:
        found = schools.get(key)
    if found is None:
        found = next((f for k, f in schools.items() if tuple(match_key(n) for n in k) == wanted), None)
    if found is None:
        found = next((f for k, f in schools.items() if len(k) == 2
                      and tuple(match_key(n) for n in k) == wanted[:2]), None)
    return found


def _planned(plans: list[dict] | None, intervention: str) -> str:
    """The intervention's registered rounds with no results yet, in words, for its page."""
    return " ".join(f"Next round{' ' + p['round'] if p.get('round') else ''} (no results yet): {p['text']}"
                    for p in plans or [] if match_key(str(p["intervention"])) == match_key(intervention))


def _tables_and_reports(table: pd.DataFrame, report: pd.DataFrame, registry_rows: pd.DataFrame | None,
                        spellings: pd.DataFrame | None, common: dict,
                        gate: publication_gate.Gate | None = None) -> dict[str, bytes]:
    """The evidence table (CSV and the head's workbook), the dictionary, the load and registry reports."""
    files: dict[str, bytes] = {
        "evidence_table.csv": csv_bytes(table),
        "evidence_table.xlsx": table_xlsx(_display_evidence(table), "Evidence table",
                                          [(name, text) for name, text in dictionary.FILES],
                                          {dictionary.label("p_value"): P_VALUE_FORMAT}),
        "data_dictionary.csv": csv_bytes(dictionary.dictionary_frame()),
        "load_report.csv": csv_bytes(report),
        "load-report.html": render("load_report.html", rows=report.fillna("").to_dict("records"),
                                   columns=list(report.columns), merged=merged_spellings(spellings, table, gate),
                                   registry_rows=(None if registry_rows is None
                                                  else registry_rows.fillna("").to_dict("records")),
                                   registry_columns=REGISTRY_REPORT_COLUMNS, **common),
        "data-dictionary.html": render("dictionary.html", entries=dictionary.ENTRIES, file_notes=dictionary.FILES,
                                       **common),
        "extract-format.html": render("format.html", help=FORMAT_HELP, choices=FORMAT_CHOICES, **common),
    }
    if registry_rows is not None:
        files["registry_report.csv"] = csv_bytes(registry_rows[REGISTRY_REPORT_COLUMNS])
    return files


def _people_pages(table: pd.DataFrame, folders: list[str], names: list[tuple[str, ...]], common: dict,
                  plans: list[dict] | None, sending: dict | None, registry,
                  withdrawn: dict[tuple[str, str], int] | None = None) -> dict[str, bytes]:
    """The send page with its templates, the padlock rule and the registered plans."""
    sending = sending or workspace.send_details(workspace.Contact(), [], date.today())
    files, send_trials = _send_files(table, folders, names, common, sending)
    files["send-your-results.html"] = render("send.html", trials=send_trials, plans=plans or [], sending=sending,
                                             **common)
    files["about-padlocks.html"] = render("padlocks.html", **common)
    files["registered-plans.html"] = render(
        "plans.html", plans=[views.plan_view(r, (withdrawn or {}).get((match_key(r.intervention), match_key(r.round)), 0))
                             for r in (registry.rounds if registry is not None else ())], **common)
    return files


def families(table: pd.DataFrame, folders: list[str], names: list[tuple[str, ...]],
             trial_views: list[views.TrialView | None], registry=None) -> dict[int, dict]:
    """Per row position: ``parent`` (a round's link back to its intervention's "all rounds" page)
    or ``rounds`` (on that page and its card: each round with its dates and own figures)."""
    groups: dict[tuple[str, str], list[int]] = {}
    for position, name in enumerate(names):
        groups.setdefault((match_key(name[0]), match_key(name[1])), []).append(position)
    out: dict[int, dict] = {}
    for positions in groups.values():
        cumulative = [p for p in positions if len(names[p]) == 2
                      and match_key(str(table.iloc[p].get("round") or "")) == match_key("all rounds")]
        if not cumulative or len(positions) < 2:
            continue
        head = cumulative[0]
        registered = {match_key(r.round): r for r in registry.rounds_of(names[head][0])} if registry is not None else {}
        links = []
        for p in positions:
            if p == head:
                continue
            v = trial_views[p]
            out[p] = {"parent": folders[head]}
            if v is not None:
                links.append(views.RoundLink(folders[p], v.round, v.months, v.strength_text, v.schools, v.provisional,
                                         views.round_dates(registered.get(match_key(v.round)))))
        out[head] = {"rounds": links}
        if trial_views[head] is not None:
            trial_views[head].round_links = links
    return out


def build_site(
    evidence: pd.DataFrame,
    schools: dict[tuple[str, ...], pd.DataFrame],
    load_report: pd.DataFrame,
    data_date: str,
    run_date: str,
    area: str = "Middlesbrough",
    problems: list[str] | None = None,
    registry_rows: pd.DataFrame | None = None,
    history: pd.DataFrame | None = None,
    plans: list[dict] | None = None,
    spellings: pd.DataFrame | None = None,
    sending: dict | None = None,
    gate: publication_gate.Gate | None = None,
    previous: dict[tuple, float] | None = None,
    registry=None,
    withdrawn: dict[tuple[str, str], int] | None = None,
    earlier: list[dict] | None = None,
) -> dict[str, bytes]:
    """Every file of the publication, ``{relative path: bytes}``.

    ``evidence`` has the contract's evidence-table columns (optional: status,
    p_new_school_benefits and the registry's columns); ``schools[(intervention, outcome_measure)]``
    (or ``[(intervention, outcome_measure, round)]`` once rows have rounds) the per-school figures (school_urn, n_intervention, n_control, g, ci_low, ci_high, eb_g, note).
    Files: ``index.html`` and the other sort views, ``evidence_table.csv`` (machines, full
    precision), ``evidence_table.xlsx`` (people), ``data_dictionary.csv`` and
    ``data-dictionary.html``, ``load_report.csv`` and ``load-report.html``,
    ``send-your-results.html``, ``extract-format.html``, ``send/<trial>-template.csv|xlsx``, and
    per trial ``<trial>/index.html``, ``<trial>/schools.csv``, ``<trial>/forest.svg``.
    Messages about trials that needed attention are appended to ``problems`` when given.

    ``history`` (``microtrials.publish.history.read_history`` plus this publication, e.g. from
    ``history.publication_frame``; its names keyed as ``registry`` names the trials now,
    ``history.as_registered``) adds to each trial page how its estimate moved publication by
    publication (``<trial>/history.svg`` from two estimates on, with a table as its text
    alternative) and what changed since the last publication. ``plans`` (dicts with
    intervention, round, outcome_measure, text: ``planner.round_plans`` worded) lists registered
    rounds with no results yet, and what they could detect, on the send page.
    ``sending`` (:func:`microtrials.workspace.send_details`) says where, how and by when schools send
    their results, on the send page and in each Excel template (blank: "ask your authority's data team").
    ``registry`` (``microtrials.ingest.registry.Registry``) adds each trial's registered facts (round
    dates, registration date, year groups, delivery, whom to ask) and ``registered-plans.html``.
    ``withdrawn`` ((match_key(intervention), match_key(round)) -> planned schools since withdrawn,
    :func:`withdrawn_counts`) says so beside each round's planned schools on ``registered-plans.html``.
    ``registry_rows`` (:func:`registry_report`), when given, is published as
    ``registry_report.csv`` and shown on the load report page. ``spellings`` (table
    `trial_spellings`) lists on the load report page the spellings merged into a published trial.

    ``gate`` (:func:`microtrials.publish.gate.build`) decides which delivered names may be published; rows
    whose names it withholds are left out. Without one, the names in ``evidence`` are taken as
    declared (:func:`microtrials.publish.gate.trusting`) and any other delivered name is withheld.
    ``previous`` (:func:`previous_counts`) and ``earlier`` (earlier publications' kept ``Protected.state``)
    extend disclosure control to differences between earlier publications and this one (:func:`protection`).
    """
    problems = [] if problems is None else problems
    gate = publication_gate.trusting(evidence) if gate is None else gate
    evidence, withheld = publication_gate.withhold(evidence, gate)
    if withheld:
        problems.append(f"{withheld} trial row(s) not published: their names are {gate.withheld_reason}")
    table, protected_schools = protected_publication(evidence, schools, previous, problems, earlier)
    history = as_registered(history, registry)  # a trial renamed with its old name as an alias keeps its history
    names = page_names(table)
    folders, messages = trial_folders(names)
    problems.extend(messages)
    common = _common(area, data_date, run_date, "")
    report = public_load_report(load_report, gate)
    registry_rows = None if registry_rows is None else gated_registry_report(registry_rows, gate)
    files = _tables_and_reports(table, report, registry_rows, spellings, common, gate)
    files.update(_people_pages(table, folders, names, common, plans, sending, registry, withdrawn))
    trial_views = _first_views(table, folders, registry)
    family = families(table, folders, names, trial_views, registry)
    trial_common = _common(area, data_date, run_date, "../")
    for position, folder in enumerate(folders):
        files = _one_trial_pages(files, table, position, folder, protected_schools[position], trial_common,
                                 history, plans, trial_views, family.get(position), problems)
    for sort in SORT_VIEWS:  # an intervention's rounds are on its card, not cards of their own
        ordered = [trial_views[i] for i in _sorted(table, sort) if "parent" not in family.get(i, {})]
        files[sort.file] = render("index.html", trials=ordered, sort=sort, sorts=SORT_VIEWS,
                                  load_rows=len(report), **common)
    return files


def _one_trial_pages(files: dict[str, bytes], table: pd.DataFrame, position: int, folder: str, schools,
                     trial_common: dict, history, plans, trial_views: list, family_entry, problems: list[str]) -> dict[str, bytes]:
    """``files`` with one trial's pages added (its view set in ``trial_views``); a trial whose pages
    fail gets a plain failure page instead, with the reason in ``problems``: never costs the others."""
    row = table.iloc[position]
    key = (str(row["intervention"]), str(row["outcome_measure"]))
    try:
        files.update(_trial_files(row, folder, schools, trial_common, history, _planned(plans, key[0]),
                                  trial_views[position], family_entry))
        trial_views[position] = trial_views[position] or views.trial_view(row, folder)
    except Exception as exc:  # noqa: BLE001 - one trial's failure never costs the others
        problems.append(f"trial '{key[0]}' / '{key[1]}': its page could not be built ({type(exc).__name__}: {exc})")
        files = {k: v for k, v in files.items() if not k.startswith(f"{folder}/")}
        files.update(_failed_trial_page(row, folder, exc, trial_common))
        trial_views[position] = views.fallback_view(row, folder, "Its page could not be built in this run.")
    return files

# --- preview server ----------------------------------------------------------------------------

class _Handler(SimpleHTTPRequestHandler):
    """Static files with explicit UTF-8 types, no directory listings, no sniffing."""

    extensions_map = {
        **SimpleHTTPRequestHandler.extensions_map,
        ".html": "text/html; charset=utf-8",
        ".csv": "text/csv; charset=utf-8",
        ".svg": "image/svg+xml",
        ".png": "image/png",
    }
    quiet = False

    def list_directory(self, path):  # noqa: D102 - no listings of the folder
        self.send_error(404, "No index here")
        return None

    def end_headers(self) -> None:
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        if not self.quiet:
            super().log_message(format, *args)


def make_server(folder: Path, port: int = 0, quiet: bool = True) -> ThreadingHTTPServer:
    """An HTTP server for ``folder`` on 127.0.0.1 (``port`` 0 picks a free one); not yet serving."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MicrotrialsError(f"{folder} is not a folder: run `microtrials run` first, or pass --out")
    handler = type("Handler", (_Handler,), {"quiet": quiet})
    try:
        return ThreadingHTTPServer(("127.0.0.1", port), functools.partial(handler, directory=str(folder)))
    except OSError as exc:
        raise MicrotrialsError(f"cannot serve on 127.0.0.1:{port} ({exc.strerror}): choose another --port") from exc


def serve(folder: Path, port: int = 8000) -> None:
    """Serve the publication in ``folder`` on http://127.0.0.1:port/ until interrupted (Ctrl+C)."""
    with make_server(folder, port, quiet=False) as server:
        host, bound = server.server_address[:2]
        print(f"Serving {folder} at http://{host}:{bound}/ (Ctrl+C to stop)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped")
