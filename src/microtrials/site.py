"""The "What works" publication: static HTML pages, CSVs and forest plots, and a local preview server.

``build_site`` returns every file of the publication as ``{relative path: bytes}``; hand it to
``microtrials.publish.publish_folder`` to write it atomically. The pages:

- work offline from the folder (relative links only, no scripts, no external fonts or styles);
- sort the evidence table without JavaScript: each sort order is its own pre-rendered page
  (``index.html`` by effect size, ``by-months.html``, ``by-strength.html``, ``by-name.html``),
  linked from the sortable column headers, with ``aria-sort`` on the sorted column;
- escape every piece of text with ``html.escape``; a Content-Security-Policy meta tag forbids
  scripts as a second line of defence;
- publish no pupil identifier: columns that could hold one are dropped, and per-school figures
  from fewer than ``SUPPRESSION_THRESHOLD`` pupils are blanked (``publish.suppress_small_groups``).
"""

from __future__ import annotations

import functools
import html
import math
import re
import unicodedata
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd

from microtrials.errors import MicrotrialsError
from microtrials.evidence_table import COLUMNS as EVIDENCE_COLUMNS
from microtrials.evidence_table import SCHOOL_COLUMNS
from microtrials.guidance import SUPPRESSION_THRESHOLD
from microtrials.plots import describe, forest_plot
from microtrials.publish import csv_bytes, suppress_small_groups

# Counts that stay published when a group is small (they say why its figures are blank); every
# other numeric column is a figure computed from pupils' scores and is suppressed with the group.
EVIDENCE_COUNTS = ["schools", "schools_both_arms", "pupils_randomised", "pupils_analysed", "attrition_pct"]
SCHOOL_COUNTS = ["n_intervention", "n_control"]
# Figures even when a column arrives blank or as text.
EVIDENCE_FIGURES = [
    "effect_size", "ci_low", "ci_high", "p_value", "months_progress", "tau", "i2", "pi_low",
    "pi_high", "fsm_effect_size", "fsm_ci_low", "fsm_ci_high", "evidence_strength", "fsm_months_progress",
]
SCHOOL_FIGURES = ["g", "ci_low", "ci_high", "shrunken_g"]

#: Column names that could hold a pupil identifier; never published.
PUPIL_IDENTIFIER = re.compile(r"^(pupil|pupil_?(id|key|ref|reference|hash|name)|upn|pseudonym.*|name|dob|date_of_birth)$",
                              re.IGNORECASE)

MINUS = "\u2212"


@dataclass(frozen=True)
class SortView:
    """One pre-rendered sort order of the evidence table."""

    file: str
    column: str
    label: str
    descending: bool


SORT_VIEWS = (
    SortView("index.html", "effect_size", "effect size, largest first", True),
    SortView("by-months.html", "months_progress", "months of progress, most first", True),
    SortView("by-strength.html", "evidence_strength", "evidence strength, strongest first", True),
    SortView("by-name.html", "intervention", "intervention name, A to Z", False),
)


def trial_slug(intervention: str, outcome_measure: str) -> str:
    """A safe lowercase folder name for a trial: ``<intervention>--<outcome-measure>``.

    Letters are folded to ASCII, anything else becomes ``-``; each part is at most 50
    characters. The ``--`` between the parts never occurs inside one, so two trials differ in
    slug unless their names differ only in punctuation, case or accents.
    """
    def part(text: str) -> str:
        ascii_text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii")
        cleaned = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
        return cleaned[:50].strip("-") or "trial"
    return f"{part(intervention)}--{part(outcome_measure)}"


# --- formatting ------------------------------------------------------------------------------

def _e(value: object) -> str:
    """Text escaped for HTML (content and attribute values)."""
    return html.escape("" if value is None else str(value), quote=True)


def _is_blank(value: object) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _float(value: object) -> float | None:
    if _is_blank(value):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _fmt(value: object, digits: int = 2, signed: bool = False) -> str:
    number = _float(value)
    if number is None:
        return ""
    text = f"{number:+.{digits}f}" if signed else f"{number:.{digits}f}"
    if text.lstrip("+-").strip("0.") == "":
        text = text.lstrip("+-")  # no "-0.00"
    return text.replace("-", MINUS)


def _interval(low: object, high: object, digits: int = 2) -> str:
    lo, hi = _fmt(low, digits), _fmt(high, digits)
    return f"{lo} to {hi}" if lo and hi else ""


def _p_value(value: object) -> str:
    number = _float(value)
    if number is None:
        return ""
    return "< 0.001" if number < 0.001 else f"{number:.3f}"


def _months(value: object) -> str:
    number = _float(value)
    if number is None:
        return ""
    months = int(round(number))
    return f"{months:+d}".replace("-", MINUS) if months else "0"


def _int(value: object) -> str:
    number = _float(value)
    return "" if number is None else f"{int(round(number)):,}"


def _data_value(value: object) -> str:
    """The machine-readable value of a cell (``data-value``), full precision, blank when missing."""
    number = _float(value)
    if number is not None:
        return repr(number)
    return "" if _is_blank(value) else str(value)


def _td(text: str, value: object = None, numeric: bool = True, blank: str = "not available") -> str:
    shown = text if text else f'<span class="blank">{_e(blank)}</span>'
    data = f' data-value="{_e(_data_value(value))}"' if value is not None or numeric else ""
    cls = ' class="num"' if numeric else ""
    return f"<td{cls}{data}>{shown}</td>"


# --- the page frame --------------------------------------------------------------------------

STYLE = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; color: #1b1b1b;
  background: #ffffff; line-height: 1.5; margin: 0 auto; padding: 1rem 1.25rem 3rem; max-width: 96rem; }
a { color: #1d4f91; } a:visited { color: #5b2a86; }
a:focus-visible, [tabindex]:focus-visible { outline: 3px solid #ffbf47; outline-offset: 2px; }
h1 { font-size: 1.8rem; margin: 0.5rem 0; } h2 { font-size: 1.35rem; margin-top: 2rem; }
.meta { color: #3d3d3d; }
.table-wrap { overflow-x: auto; border: 1px solid #b1b4b6; }
table { border-collapse: collapse; width: 100%; font-size: 0.92rem; }
caption { text-align: left; font-weight: 600; padding: 0.5rem; }
th, td { border-bottom: 1px solid #b1b4b6; padding: 0.45rem 0.5rem; vertical-align: top; text-align: left; }
thead th { background: #f3f2f1; vertical-align: bottom; }
tbody tr:nth-child(even) { background: #f8f8f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.blank { color: #505a5f; font-style: italic; }
td.notes { min-width: 15rem; font-size: 0.85rem; } td.notes ul { margin: 0; padding-left: 1rem; }
nav.sort ul, ul.links { padding-left: 1.2rem; }
nav.sort li[aria-current] { font-weight: 600; }
dl.howto dt { font-weight: 600; margin-top: 0.75rem; } dl.howto dd { margin-left: 0; }
dl.summary { display: grid; grid-template-columns: max-content 1fr; gap: 0.25rem 1rem; }
dl.summary dt { font-weight: 600; } dl.summary dd { margin: 0; } dl.summary ul { margin: 0; padding-left: 1rem; }
figure { margin: 1rem 0; } figure img { width: 100%; max-width: 60rem; height: auto; border: 1px solid #b1b4b6; }
footer { margin-top: 3rem; border-top: 1px solid #b1b4b6; padding-top: 0.75rem; color: #3d3d3d; }
"""

# Scripts are never needed; forbidding them stops injected markup from running even if escaping failed.
# (No default-src/img-src: Chrome does not treat file:// as 'self', and the pages must work offline.)
CSP = "script-src 'none'; object-src 'none'; base-uri 'none'; form-action 'none'"


def _page(title: str, body: str, data_date: str, run_date: str, home: str) -> bytes:
    """A complete HTML5 document."""
    return f"""<!DOCTYPE html>
<html lang="en-GB">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>{_e(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<a href="#main">Skip to the results</a>
<main id="main">
{body}
</main>
<footer>
<p>Data received up to <strong>{_e(data_date)}</strong>. Page built on <strong>{_e(run_date)}</strong>.
<a href="{_e(home)}">Back to all trials</a>.</p>
</footer>
</body>
</html>
""".encode("utf-8")


# --- the evidence table ----------------------------------------------------------------------

def _drop_identifiers(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[[c for c in frame.columns if not PUPIL_IDENTIFIER.match(str(c).strip())]]


def _sorted(evidence: pd.DataFrame, view: SortView) -> pd.DataFrame:
    """The evidence rows in the view's order; blanks last, ties broken by effect size then name."""
    names = ["intervention", "outcome_measure"]
    keys = list(dict.fromkeys([view.column, "effect_size", *names]))
    ascending = [not view.descending if k == view.column else k in names for k in keys]
    sort_frame = pd.DataFrame({
        k: evidence[k].astype(str).str.casefold() if k in names else pd.to_numeric(evidence[k], errors="coerce")
        for k in keys
    })
    order = sort_frame.sort_values(keys, ascending=ascending, na_position="last", kind="stable").index
    return evidence.loc[order]


HEADERS = [
    # (the column a header sorts by, or None; plain-English header text)
    ("intervention", "Intervention"),
    (None, "Measured by"),
    ("effect_size", "Effect size"),
    (None, "Effect size: 95% confidence interval"),
    ("months_progress", "Months of extra progress"),
    ("evidence_strength", "Evidence strength (out of 5)"),
    (None, "Schools (with both groups)"),
    (None, "Pupils analysed (of those randomised)"),
    (None, "What a new school could expect (prediction interval)"),
    (None, "Effect size for pupils eligible for free school meals"),
    (None, "Notes"),
]


def _header_row(view: SortView) -> str:
    cells = []
    by_column = {v.column: v for v in SORT_VIEWS}
    for key, text in HEADERS:
        if key in by_column:
            target = by_column[key]
            if target.file == view.file:
                direction = "descending" if view.descending else "ascending"
                arrow = "\u25bc" if view.descending else "\u25b2"
                cells.append(f'<th scope="col" aria-sort="{direction}">{_e(text)} '
                             f'<span aria-hidden="true">{arrow}</span></th>')
            else:
                cells.append(f'<th scope="col"><a href="{_e(target.file)}" '
                             f'title="Sort by {_e(target.label)}">{_e(text)}</a></th>')
        else:
            cells.append(f'<th scope="col">{_e(text)}</th>')
    return "<tr>" + "".join(cells) + "</tr>"


def _split_notes(text: str) -> list[str]:
    """Split notes on top-level "; " (not inside parentheses) into separate caveats."""
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


def _notes_td(notes: list[str]) -> str:
    items = [item for note in notes for item in _split_notes(note)]
    if not items:
        return '<td class="notes"><span class="blank">none</span></td>'
    if len(items) == 1:
        return f'<td class="notes">{_e(items[0])}</td>'
    return '<td class="notes"><ul>' + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul></td>"


def _evidence_row(row: pd.Series, slug: str) -> str:
    strength = _float(row.get("evidence_strength"))
    schools = _int(row.get("schools"))
    both = _int(row.get("schools_both_arms"))
    analysed, randomised = _int(row.get("pupils_analysed")), _int(row.get("pupils_randomised"))
    fsm = _fmt(row.get("fsm_effect_size"))
    fsm_ci = _interval(row.get("fsm_ci_low"), row.get("fsm_ci_high"))
    notes = [str(row.get("notes"))] if not _is_blank(row.get("notes")) and str(row.get("notes")) else []
    suppressed = not _is_blank(row.get("suppressed")) and bool(str(row.get("suppressed")))
    if suppressed:
        notes.append("Figures not published: " + str(row.get("suppressed")))
    blank = "not published" if suppressed else "not available"
    cells = [
        f'<th scope="row" data-value="{_e(row["intervention"])}"><a href="{_e(slug)}/index.html">'
        f'{_e(row["intervention"])}</a></th>',
        _td(_e(row["outcome_measure"]), row["outcome_measure"], numeric=False),
        _td(_fmt(row.get("effect_size")), row.get("effect_size"), blank=blank),
        _td(_interval(row.get("ci_low"), row.get("ci_high")),
            f"{_data_value(row.get('ci_low'))} {_data_value(row.get('ci_high'))}".strip(), blank=blank),
        _td(_months(row.get("months_progress")), row.get("months_progress"), blank=blank),
        _td("" if strength is None else f"{strength:g} out of 5", row.get("evidence_strength"), blank=blank),
        _td(f"{schools} ({both})" if schools else "", row.get("schools")),
        _td(f"{analysed} of {randomised}" if analysed else "", row.get("pupils_analysed")),  # attrition: CSV, trial page
        _td(_interval(row.get("pi_low"), row.get("pi_high")),
            f"{_data_value(row.get('pi_low'))} {_data_value(row.get('pi_high'))}".strip(), blank=blank),
        _td(f"{fsm} ({fsm_ci})" if fsm and fsm_ci else fsm, row.get("fsm_effect_size"),
            blank="not published" if suppressed else "too few pupils"),
        _notes_td(notes),
    ]
    return f'<tr data-slug="{_e(slug)}">' + "".join(cells) + "</tr>"


HOW_TO_READ = f"""
<section aria-labelledby="howto">
<h2 id="howto">How to read this</h2>
<p>Each row is a <strong>trial</strong>: schools split pupils at random into an intervention group and
a control group, then compared their results on the same assessment. Random allocation means
any difference larger than chance can be put down to the intervention.</p>
<dl class="howto">
<dt>Effect size</dt>
<dd>How much better (or, below 0, worse) the intervention group did than the control group, in
standard deviations of the test score (Hedges' g), after allowing for the pupils' earlier scores
and for differences between schools. 0 means no difference; 0.2 is a typical effect for a
school intervention; 0.4 is large.</dd>
<dt>95% confidence interval</dt>
<dd>The range of effect sizes the results are consistent with. If it includes 0, the trial cannot
rule out that the intervention made no difference.</dd>
<dt>Months of extra progress</dt>
<dd>The effect size expressed, as the Education Endowment Foundation does, as the additional months
of progress pupils made over a year compared with the control group (for example, 0.25 is about
3 months).</dd>
<dt>What a new school could expect (prediction interval)</dt>
<dd>Schools get different results from the same intervention. This is the range (95%) within which
the effect in another school like these is likely to fall. It is wider than the confidence
interval; when it includes 0, some schools may see no benefit.</dd>
<dt>Evidence strength (out of 5)</dt>
<dd>How secure the finding is, like the Education Endowment Foundation's padlocks: 5 is very secure,
0 is not secure. It starts from the design (pupils randomised within schools) and is lowered when
the trial is too small to detect a modest effect, when many pupils have no result, when the
groups were unequal at the start, or when few schools had both groups.</dd>
<dt>Effect size for pupils eligible for free school meals</dt>
<dd>The same effect size for disadvantaged pupils only; left blank when too few took part.</dd>
<dt>Figures not published</dt>
<dd>A figure based on fewer than {SUPPRESSION_THRESHOLD} pupils is not published, so that no pupil
can be identified. No pupil names or references appear anywhere in this publication.</dd>
</dl>
</section>
"""


def _index_page(evidence: pd.DataFrame, slugs: dict[int, str], view: SortView, area: str,
                data_date: str, run_date: str, load_rows: int) -> bytes:
    rows = "\n".join(_evidence_row(evidence.loc[i], slugs[i]) for i in _sorted(evidence, view).index)
    views = "\n".join(
        f'<li aria-current="page">{_e(v.label)} (this page)</li>' if v.file == view.file
        else f'<li><a href="{_e(v.file)}">{_e(v.label)}</a></li>'
        for v in SORT_VIEWS
    )
    trial_links = "\n".join(
        f'<li><a href="{_e(slugs[i])}/index.html">{_e(evidence.loc[i, "intervention"])}: '
        f'{_e(evidence.loc[i, "outcome_measure"])}</a> (<a href="{_e(slugs[i])}/schools.csv" download>'
        f'school-by-school figures, CSV</a>)</li>'
        for i in _sorted(evidence, SORT_VIEWS[3]).index
    )
    n = len(evidence)
    caption = f"{n} trial{'s' if n != 1 else ''}, sorted by {view.label}"
    body = f"""
<h1>What works for {_e(area)}</h1>
<p class="meta">Results of randomised trials run by {_e(area)} schools. Data received up to
<strong>{_e(data_date)}</strong>; page built on <strong>{_e(run_date)}</strong>.</p>
<p>Every row links to the trial's own page, with a chart of each school's result.
<a href="#howto">How to read this table</a>.</p>
<nav class="sort" aria-label="Sort the table">
<p>Sort the table by:</p>
<ul>
{views}
</ul>
</nav>
<div class="table-wrap" role="region" aria-labelledby="evidence-caption" tabindex="0">
<table id="evidence">
<caption id="evidence-caption">Evidence table: {_e(caption)}</caption>
<thead>
{_header_row(view)}
</thead>
<tbody>
{rows}
</tbody>
</table>
</div>
{HOW_TO_READ}
<section aria-labelledby="trials">
<h2 id="trials">Trials</h2>
<ul class="links">
{trial_links}
</ul>
</section>
<section aria-labelledby="downloads">
<h2 id="downloads">Download the data</h2>
<ul class="links">
<li><a href="evidence_table.csv" download>The evidence table (CSV)</a>: every column above, at full precision.</li>
<li><a href="load_report.csv" download>The load report (CSV)</a>: which school files were received and
what was set aside ({load_rows} row{'s' if load_rows != 1 else ''});
also <a href="load-report.html">as a web page</a>.</li>
</ul>
</section>
"""
    title = f"What works for {area}: evidence table sorted by {view.label}"
    return _page(title, body, data_date, run_date, "index.html")


# --- trial pages -----------------------------------------------------------------------------

def _school_rows(schools: pd.DataFrame) -> str:
    rows = []
    for _, row in schools.iterrows():
        reason = "" if _is_blank(row.get("suppressed")) else str(row.get("suppressed"))
        note = f"Not published: {reason}" if reason else ""
        if not reason and _float(row.get("g")) is None:
            note = "No estimate (pupils in only one group)"
        rows.append(
            "<tr>"
            f'<th scope="row">{_e(row["school_urn"])}</th>'
            + _td(_int(row.get("n_intervention")), row.get("n_intervention"), blank="none")
            + _td(_int(row.get("n_control")), row.get("n_control"), blank="none")
            + _td(_fmt(row.get("g")), row.get("g"), blank="not published")
            + _td(_interval(row.get("ci_low"), row.get("ci_high")), None, blank="not published")
            + _td(_fmt(row.get("shrunken_g")), row.get("shrunken_g"), blank="not published")
            + _td(_e(note), None, numeric=False, blank="")
            + "</tr>"
        )
    return "\n".join(rows)


def _trial_page(row: pd.Series, schools: pd.DataFrame, svg_alt: str, area: str,
                data_date: str, run_date: str) -> bytes:
    name = f"{row['intervention']}: {row['outcome_measure']}"
    strength = _float(row.get("evidence_strength"))
    i2 = _float(row.get("i2"))
    summary = [
        ("Effect size (Hedges' g)", _fmt(row.get("effect_size"))),
        ("95% confidence interval", _interval(row.get("ci_low"), row.get("ci_high"))),
        ("Months of extra progress", _months(row.get("months_progress"))),
        ("p-value", _p_value(row.get("p_value"))),
        ("Evidence strength", "" if strength is None else f"{strength:g} out of 5"),
        ("Schools with analysed pupils", _int(row.get("schools"))),
        ("Schools with pupils in both groups", _int(row.get("schools_both_arms"))),
        ("Pupils randomised", _int(row.get("pupils_randomised"))),
        ("Pupils analysed", _int(row.get("pupils_analysed"))),
        ("Pupils with no result", "" if _float(row.get("attrition_pct")) is None
         else f"{_float(row.get('attrition_pct')):.1f}%"),
        ("Spread of the effect between schools (tau)", _fmt(row.get("tau"))),
        ("Share of the variation between schools not due to chance (I\u00b2)",
         "" if i2 is None else f"{i2:.0f}%"),
        ("What a new school could expect (95% prediction interval)", _interval(row.get("pi_low"), row.get("pi_high"))),
        ("Effect size for pupils eligible for free school meals", _fmt(row.get("fsm_effect_size"))),
        ("its 95% confidence interval", _interval(row.get("fsm_ci_low"), row.get("fsm_ci_high"))),
        ("Months of extra progress for pupils eligible for free school meals", _months(row.get("fsm_months_progress"))),
        ("Notes", "" if _is_blank(row.get("notes")) else str(row.get("notes"))),
    ]
    if not _is_blank(row.get("suppressed")) and str(row.get("suppressed")):
        summary.append(("Figures not published", str(row.get("suppressed"))))
    not_available = '<span class="blank">not available</span>'

    def value(key: str, text: str) -> str:
        if not text:
            return not_available
        notes = _split_notes(text) if key == "Notes" else [text]
        if len(notes) > 1:
            return "<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>"
        return _e(text)
    items = "\n".join(f"<dt>{_e(k)}</dt><dd>{value(k, v)}</dd>" for k, v in summary)
    n = len(schools)
    body = f"""
<p><a href="../index.html">All trials</a></p>
<h1>{_e(row['intervention'])}</h1>
<p class="meta">Outcome measured by: <strong>{_e(row['outcome_measure'])}</strong>. Data received up to
<strong>{_e(data_date)}</strong>; page built on <strong>{_e(run_date)}</strong>.</p>
<h2 id="summary">Summary</h2>
<dl class="summary">
{items}
</dl>
<h2 id="forest">School by school</h2>
<figure>
<img src="forest.svg" alt="{_e(svg_alt)}" width="720">
<figcaption>Each square is one school's effect size with its 95% confidence interval (the line);
bigger squares are more precise. Open circles are the schools' estimates pulled towards the overall
result (shrunken estimates). The diamond is all schools together, and the dashed line the range a
new school could expect. Schools with fewer than {SUPPRESSION_THRESHOLD} pupils in a group are not
shown. <a href="forest.svg">Open the chart on its own</a>.</figcaption>
</figure>
<div class="table-wrap" role="region" aria-labelledby="schools-caption" tabindex="0">
<table id="schools">
<caption id="schools-caption">{_e(name)}: {n} school{'s' if n != 1 else ''}</caption>
<thead>
<tr><th scope="col">School (URN)</th><th scope="col">Pupils in the intervention group</th>
<th scope="col">Pupils in the control group</th><th scope="col">Effect size</th>
<th scope="col">95% confidence interval</th><th scope="col">Shrunken estimate</th>
<th scope="col">Note</th></tr>
</thead>
<tbody>
{_school_rows(schools)}
</tbody>
</table>
</div>
<p><a href="schools.csv" download>Download these figures (CSV)</a> \u00b7
<a href="../evidence_table.csv" download>the whole evidence table (CSV)</a></p>
"""
    return _page(f"{name}: What works for {area}", body, data_date, run_date, "../index.html")


def _load_report_page(load_report: pd.DataFrame, area: str, data_date: str, run_date: str,
                      limit: int = 500) -> bytes:
    shown = load_report.head(limit)
    head = "".join(f'<th scope="col">{_e(c)}</th>' for c in shown.columns)
    rows = "\n".join(
        "<tr>" + "".join(f"<td>{_e('' if _is_blank(v) else v)}</td>" for v in r) + "</tr>"
        for r in shown.itertuples(index=False, name=None)
    )
    more = (f"<p>Showing the first {limit} of {len(load_report)} rows; "
            f'<a href="load_report.csv" download>the CSV</a> has them all.</p>') if len(load_report) > limit else ""
    body = f"""
<p><a href="index.html">All trials</a></p>
<h1>Load report</h1>
<p>What happened to each school file received, and any rows set aside with the reason.</p>
{more}
<div class="table-wrap" role="region" aria-labelledby="load-caption" tabindex="0">
<table id="load-report">
<caption id="load-caption">Load report: {len(load_report)} row{'s' if len(load_report) != 1 else ''}</caption>
<thead><tr>{head}</tr></thead>
<tbody>
{rows}
</tbody>
</table>
</div>
<p><a href="load_report.csv" download>Download the load report (CSV)</a></p>
"""
    return _page(f"Load report: What works for {area}", body, data_date, run_date, "index.html")


# --- the whole publication ---------------------------------------------------------------------

def _figures(frame: pd.DataFrame, counts: list[str], figures: list[str]) -> list[str]:
    """The named figures plus any other numeric column except the counts: what small groups lose."""
    return [c for c in frame.columns if c in figures or (
        c not in counts and c != "school_urn" and pd.api.types.is_numeric_dtype(frame[c])
        and not pd.api.types.is_bool_dtype(frame[c]))]


def _prepare_evidence(evidence: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in EVIDENCE_COLUMNS if c not in evidence.columns]
    if missing:
        raise MicrotrialsError(f"the evidence table lacks columns {missing}: rebuild it with microtrials.evidence_table")
    frame = _drop_identifiers(evidence).copy()
    frame = frame.sort_values(["intervention", "outcome_measure"], kind="stable").reset_index(drop=True)
    return suppress_small_groups(frame, ["pupils_analysed"], _figures(frame, EVIDENCE_COUNTS, EVIDENCE_FIGURES))


def _prepare_schools(schools: pd.DataFrame | None) -> pd.DataFrame:
    if schools is None:
        return pd.DataFrame({c: pd.Series(dtype=object if c == "school_urn" else float) for c in SCHOOL_COLUMNS}
                            | {"suppressed": pd.Series(dtype=object)})
    missing = [c for c in SCHOOL_COLUMNS if c not in schools.columns]
    if missing:
        raise MicrotrialsError(f"a per-school table lacks columns {missing}")
    frame = _drop_identifiers(schools).copy()
    frame["school_urn"] = frame["school_urn"].astype(str)
    frame = frame.sort_values("school_urn", kind="stable").reset_index(drop=True)
    # A school's pupil counts are figures of its small group too: blanked with the rest.
    return suppress_small_groups(frame, SCHOOL_COUNTS, SCHOOL_COUNTS + _figures(frame, SCHOOL_COUNTS, SCHOOL_FIGURES))


def build_site(
    evidence: pd.DataFrame,
    schools: dict[str, pd.DataFrame],
    load_report: pd.DataFrame,
    data_date: str,
    run_date: str,
    area: str = "Middlesbrough",
) -> dict[str, bytes]:
    """Every file of the publication, ``{relative path: bytes}``.

    ``evidence`` has the contract's evidence-table columns; ``schools[trial_slug(...)]`` the
    per-school figures (school_urn, n_intervention, n_control, g, ci_low, ci_high, shrunken_g).
    Files: ``evidence_table.csv``, ``load_report.csv``, ``index.html`` and the other sort views,
    ``load-report.html``, and per trial ``<slug>/index.html``, ``<slug>/schools.csv``,
    ``<slug>/forest.svg``. Per-school figures from fewer than 10 pupils in an arm, and trial
    figures from fewer than 10 analysed pupils, are blanked with a ``suppressed`` reason.
    """
    table = _prepare_evidence(evidence)
    slugs = {i: trial_slug(r.intervention, r.outcome_measure) for i, r in table.iterrows()}
    seen: dict[str, int] = {}
    for i, slug in slugs.items():
        if slug in seen:
            a, b = table.loc[seen[slug]], table.loc[i]
            raise MicrotrialsError(
                f"trials '{a.intervention}' / '{a.outcome_measure}' and '{b.intervention}' / "
                f"'{b.outcome_measure}' share the page name {slug!r}: rename one so they differ in letters or digits")
        seen[slug] = i
    report = _drop_identifiers(load_report)
    files: dict[str, bytes] = {
        "evidence_table.csv": csv_bytes(table),
        "load_report.csv": csv_bytes(report),
        "load-report.html": _load_report_page(report, area, data_date, run_date),
    }
    for view in SORT_VIEWS:
        files[view.file] = _index_page(table, slugs, view, area, data_date, run_date, len(report))
    for i, row in table.iterrows():
        slug = slugs[i]
        per_school = _prepare_schools(schools.get(slug))
        pooled = (row["effect_size"], row["ci_low"], row["ci_high"])
        pooled = tuple(_float(v) if _float(v) is not None else math.nan for v in pooled)
        prediction = (_float(row["pi_low"]), _float(row["pi_high"]))
        title = f"{row['intervention']}: {row['outcome_measure']}"
        files[f"{slug}/forest.svg"] = forest_plot(
            per_school, pooled, title, prediction if None not in prediction else None)
        files[f"{slug}/schools.csv"] = csv_bytes(per_school)
        files[f"{slug}/index.html"] = _trial_page(row, per_school, describe(per_school, pooled), area,
                                                  data_date, run_date)
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
