"""Issue 23: graded words, provisional results, evidence history points, one intervention page, registry facts, the workbook."""

from __future__ import annotations

import io
from datetime import datetime

import pandas as pd
import pytest
from openpyxl import load_workbook

from microtrials.publish import history
from microtrials.publish import views
from microtrials.publish import site as site_module
from microtrials.stats.effect_sizes import months_progress
from microtrials.ingest.registry import read_registry
from tests.helpers.pages import READING, balanced, pages_site
from tests.helpers.site import _row, folder, text_of


@pytest.fixture(scope="module")
def site() -> dict[str, bytes]:
    return pages_site()


def page(site, intervention, outcome, round_name=None) -> str:
    name = site_module.trial_slug(intervention, outcome, round_name)
    return text_of(site[f"{name}/index.html"].decode())


@pytest.mark.parametrize(("difference", "words"), [
    (0.03, "The two groups were very similar before the intervention started (a difference of 0.03 SD)."),
    (0.08, "The groups differed a little before the intervention started (0.08 SD)."),
    (0.28, "The groups differed noticeably before the intervention started (0.28 SD): read the result with caution."),
])
def test_imbalance_is_worded_by_its_size(site, difference, words):
    text = page(site, f"Balance {difference}", "Reading age")
    assert words in text
    assert views.balance_text(-difference) == words  # the sign does not matter
    # the noticeable imbalance is the first thing "worth knowing"; a very similar start is no caveat
    caveats = views.trial_view(pd.Series(balanced(difference)), "f").caveats
    assert (caveats[:1] == [words]) is (difference > 0.1) and (words in caveats) is (difference >= 0.05)


def test_imbalance_from_the_strength_note_when_the_column_is_absent():
    row = pd.Series(_row("A", "B", notes="evidence strength 4 of 5; -1: the arms differed at baseline by 0.278 SD "
                                         "(more than 0.05 SD)"))
    assert "noticeably" in views.trial_view(row, "f").balance and "(0.28 SD)" in views.trial_view(row, "f").balance


@pytest.mark.parametrize(("p", "shown"), [(0.9996, "more than 99%"), (0.995, "more than 99%"), (0.994, "99%"),
                                          (0.5, "50%"), (0.006, "1%"), (0.005, "less than 1%"), (0.0, "less than 1%"),
                                          (None, "")])
def test_probabilities_never_say_certain(p, shown):
    assert views.chance(p) == shown


def test_no_page_says_100_percent(site):
    for name, data in site.items():
        if name.endswith(".html"):
            assert "100%" not in text_of(data.decode()), name
    assert "more than 99%" in page(site, "Balance 0.03", "Reading age")
    assert "less than 1%" in page(site, "Balance 0.28", "Reading age")


@pytest.mark.parametrize(("months", "strength", "cost", "status", "line"), [
    (3, 2, 1, "published", "Moderate impact for very low cost, based on limited local evidence."),
    (6, 5, 3, "published", "High impact for moderate cost, based on very extensive local evidence."),
    (0, 3, None, "published", "Very low or no impact, based on moderate local evidence."),
    (-2, 4, 2, "published", "Negative impact for low cost, based on extensive local evidence."),
    (8, 0, 5, "published", "Unclear impact for very high cost, based on insufficient local evidence."),
    (4, 2, 1, "interim", "Provisional: moderate impact for very low cost, based on limited local evidence, "
                         "until every school has sent results."),
    (None, None, 1, "not_estimable", "No result yet."),
])
def test_one_line_verdict_in_the_toolkits_manner(months, strength, cost, status, line):
    assert views.verdict(months, strength, cost, status) == line


@pytest.mark.parametrize(("months", "line"), [
    (-1, "Very low or no impact for moderate cost, based on extensive local evidence."),
    (1, "Very low or no impact for moderate cost, based on extensive local evidence."),
    (3, "Unclear impact for moderate cost, based on extensive local evidence."),
])
def test_a_result_that_could_be_chance_is_never_called_negative_or_moderate(months, line):
    assert views.verdict(months, 4, 3, "published", could_be_chance=True) == line
    row = pd.Series(_row("A", "B", months_progress=months, evidence_strength=4, cost_rating=3, ci_low=-0.1,
                         ci_high=0.2))
    assert views.trial_view(row, "f").verdict == line


def test_interim_is_provisional_capped_and_after_every_final_result(site):
    card = text_of("<main>" + next(c for c in site["index.html"].decode().split('<li class="card')
                                   if 'data-folder="interim-star--maths-test"' in c) + "</main>")
    assert "Provisional" in card and "2 of 5 padlocks provisional" in card and "4 of 5" not in card
    for sort in site_module.SORT_VIEWS:  # +9 months and 4 padlocks, yet after every final result
        statuses = [s.split('"')[0] for s in site[sort.file].decode().split('data-status="')[1:]]
        assert statuses.index("interim") > max(i for i, s in enumerate(statuses) if s == "published"), sort.file
    assert "2 of 5 padlocks provisional (capped at 2 until the round is complete)" in page(site, "Interim star", "Maths test")


def test_every_padlock_rating_says_it_is_local_and_links_the_rule(site):
    for name in ("index.html", f"{folder('Balance 0.08', 'Reading age')}/index.html"):
        html = site[name].decode()
        assert html.count("about-padlocks.html\">local padlocks</a>, not the Toolkit's") >= 1, name
    assert "not the same" in text_of(site["about-padlocks.html"].decode())


def test_a_trial_unchanged_across_three_runs_has_one_history_point(site):
    unchanged = site[f"{folder('Balance 0.03', 'Reading age')}/index.html"].decode()
    changed = site[f"{folder('Balance 0.08', 'Reading age')}/index.html"].decode()
    assert 'id="history-table"' not in unchanged
    assert "Unchanged since it was first published on 1 November 2026" in text_of(unchanged)
    rows = changed[changed.index('id="history-table"'):changed.index("</table>", changed.index('id="history-table"'))]
    assert rows.count('<th scope="row">') == 3
    assert "a school's corrected file" in text_of(changed) and "first published" in text_of(changed)
    # the index says it changed, and when; the unchanged trial says nothing of the kind
    index = text_of(site["index.html"].decode())
    assert "Changed on 3 November 2026: a school's corrected file" in index
    assert index.count("Changed on") == 1


def _point(day, urns, effect=0.2, **extra):
    return {"publication_id": f"p{day}", "published_at": datetime(2026, 11, day), "intervention": "T",
            "outcome_measure": "O", "round": None, "effect_size": effect, "school_urns": urns, **extra}


def test_history_points_say_why_in_one_phrase():
    rows = pd.DataFrame([_point(1, "111001 111002"), _point(2, "111001 111002 111003 111004 111005", 0.25),
                         _point(3, "111001 111002 111003 111004", 0.24, withdrawn_urns="111005"),
                         _point(4, "111001 111002 111003 111004 111005"),
                         _point(5, "111001 111002 111003 111004 111005", 0.2, national_months=5),
                         _point(6, "111001 111002 111003 111004 111005", 0.2, national_months=5)])
    points = history.evidence_points(rows, "T", "O", None)
    assert list(points["reason"]) == ["first published", "3 schools added", "a school withdrawn", "a school rejoined",
                                      "registry changed"]
    same = pd.DataFrame([_point(1, "111001", pupils_analysed=40), _point(2, "111001", 0.3, pupils_analysed=40),
                         _point(3, "111001", 0.3, pupils_analysed=38)])
    assert list(history.evidence_points(same, "T", "O", None)["reason"])[1:] == [
        "figures recalculated (same schools and pupils)", "a school's corrected file"]
    # a school gone without `microtrials withdraw` is not called withdrawn
    gone = pd.DataFrame([_point(1, "111001 111002"), _point(2, "111001", 0.3)])
    assert list(history.evidence_points(gone, "T", "O", None)["reason"]) == ["first published",
                                                                          "a school no longer counted"]


def test_a_correction_replaces_the_mistaken_point():
    wiped = pd.DataFrame([_point(1, "111001 111002 111003"), _point(2, "111001 111002", 0.5),
                          _point(3, "111001 111002 111003", correction="school 111003's file was removed by mistake")])
    assert list(history.evidence_points(wiped, "T", "O", None)["publication_id"]) == ["p1"]
    fixed = pd.DataFrame([_point(1, "111001 111002"), _point(2, "111001 111002", 0.5),
                          _point(3, "111001 111002", 0.3, correction="wrong scores in one file")])
    points = history.evidence_points(fixed, "T", "O", None)
    assert list(points["publication_id"]) == ["p1", "p3"]
    assert points["reason"].iloc[-1] == "correction: wrong scores in one file"


def test_one_intervention_one_page_linking_every_round_and_back(site):
    main = folder(*READING)
    html = site[f"{main}/index.html"].decode()
    for round_name in ("2025 Autumn", "2026 Summer"):
        child = site_module.trial_slug(*READING, round_name)
        assert f'href="../{child}/index.html"' in html
        assert f'href="../{main}/index.html">see all its rounds together' in site[f"{child}/index.html"].decode()
    text = text_of(html)
    assert "8 September 2025 to 19 December 2025" in text and "20 April 2026 to 17 July 2026" in text
    assert text.index("Extra progress") < text.index("Its rounds")  # leads with the cumulative result
    # the index has the intervention's card (with its rounds), not a card per round
    index = site["index.html"].decode()
    assert index.count(f'data-folder="{main}') == 1 and f'href="{site_module.trial_slug(*READING, "2026 Summer")}/index.html"' in index
    # the all-rounds school table labels each school's round (111001 took part in both)
    assert "111001 (round 2025 Autumn)" in text and "111001 (round 2026 Summer)" in text


def test_trial_page_has_the_registered_facts_and_the_plan(site):
    text = page(site, *READING, "2025 Autumn")
    for fact in ("Round dates 8 September 2025 to 19 December 2025", "Plan registered 14 July 2025, before results",
                 "Year groups Y7", "How it is delivered 2 x 30 min a week for 10 weeks", "Delivered by trained TA",
                 "Whom to ask in the network Research lead, Park End Primary", "4 schools", "241 pupils"):
        assert fact in text, fact
    plans = text_of(site["registered-plans.html"].decode())
    assert "Schools planned 3" in plans and "111001" not in plans
    anchor = views.plan_anchor("Reciprocal reading", "2025 Autumn")
    assert f'id="{anchor}"' in site["registered-plans.html"].decode()
    assert f'registered-plans.html#{anchor}"' in site[f"{site_module.trial_slug(*READING, '2025 Autumn')}/index.html"].decode()


@pytest.mark.parametrize(("column", "value", "problem"), [
    ("contact", "jo.bloggs@school.org", "email address or a phone number"),
    ("contact", "Ring 01642 123456", "email address or a phone number"),
    ("contact", "Ask pupil A123456789012", "a pupil"),
    ("dosage", "x" * 121, "at most 120"),
    ("year_groups", "Y15", "not a year group"),
    ("year_groups", "lots", "not a year group"),
])
def test_registry_refuses_what_must_not_be_published(column, value, problem):
    header = "intervention,outcome_measure,start_date,schools," + column
    registry = read_registry(f"{header}\nA,B,2025-09-01,111001,\"{value}\"\nC,D,2025-09-01,111002,\n".encode())
    assert [r.intervention for r in registry.rounds] == ["C"]  # the row is left out, the others stay
    assert problem in registry.problems[0].message and column in registry.problems[0].message


@pytest.mark.parametrize("value", ["7", "Y3-Y4", "Years 5 and 6", "Reception, 1", "R-2"])
def test_registry_takes_year_groups_as_schools_write_them(value):
    registry = read_registry(f"intervention,outcome_measure,start_date,schools,year_groups\nA,B,2025-09-01,111001,"
                             f"\"{value}\"\n".encode())
    assert registry.rounds[0].year_groups == value, registry.problems


def test_index_card_has_national_fsm_range_and_verdict(site):
    index = text_of(site["index.html"].decode())
    assert "+3 months here · nationally +6 months (EEF Toolkit)" in index
    assert "Measured by NGRT standardised score · all rounds together · Y7" in index  # for whom
    low, high = months_progress(0.02), months_progress(0.60)  # the rows' FSM interval
    assert f"Pupils on free school meals: +4 months (+{low} to +{high}), less secure" in index
    assert "Moderate impact for very low cost" in index


def test_the_workbook_a_head_opens(site):
    book = load_workbook(io.BytesIO(site["evidence_table.xlsx"]))
    sheet = book["Evidence table"]
    headers = [c.value for c in sheet[1]]
    assert headers[:8] == ["Intervention", "Measured by", "Round", "Months of extra progress", "Verdict", "Padlocks",
                           "Status", "Cost"]
    assert sheet.auto_filter.ref == f"A1:{sheet.cell(1, len(headers)).column_letter}{sheet.max_row}"
    rows = [dict(zip(headers, (c.value for c in row))) for row in sheet.iter_rows(min_row=2)]
    interim = next(r for r in rows if r["Intervention"] == "Interim star")
    assert interim["Padlocks"] == 2 and interim["Status"] == "provisional: schools still to send results"
    for row in rows:
        assert isinstance(row["Months of extra progress"], int) and isinstance(row["Padlocks"], int)
        assert isinstance(row["p-value"], float) and isinstance(row["Effect size"], float)
    p_column = headers.index("p-value") + 1
    assert sheet.cell(2, p_column).number_format == site_module.P_VALUE_FORMAT
    assert "Evidence strength" not in headers and "Status" in headers[:8]
    assert next(r for r in rows if r["Round"] == "2025 Autumn")["Cost"] == "£ very low cost"
