"""The officer's to-do list (microtrials.summary) and what schools are told (send page, templates), without Dagster."""

from __future__ import annotations

import io
from datetime import date
from pathlib import Path

import openpyxl
import pandas as pd

from microtrials import summary, workspace
from microtrials.ingest.registry import read_registry, results_due
from microtrials.publish.site import build_site
from tests.helpers.site import small_evidence, small_load_report

MESSAGES = pd.DataFrame({
    "level": ["warning", "error", "error"],
    "rule": ["unplanned_school", "unregistered", "registry_row"],
    "intervention": ["Reciprocal reading", "Philosophy for Children", ""],
    "school_urn": ["111601", "111100,111105", ""],
    "message": ["school 111601 is not in the plan for Reciprocal reading",
                "'Philosophy for Children' is not in the registry: add it, or correct the name",
                "trials.csv line 6, column start_date: '2026-13-01' is not a date"],
})
PROGRESS = pd.DataFrame({
    "intervention": ["Reciprocal reading", "Maths mastery"], "round": ["2026 Summer", ""],
    "awaited_urns": ["111114 111295", ""], "status": ["interim", None],
    "status_note": ["awaiting 2 of 6 schools", ""],
})
EVIDENCE = pd.DataFrame({
    "intervention": ["Reciprocal reading", "Maths mastery", "Tutoring"],
    "outcome_measure": ["NGRT", "PUMA", "GL"], "round": ["2026 Summer", "", ""],
    "status": ["interim", "published", "not_estimable"],
    "notes": ["awaiting 2 of 6 schools; more", "", "only one school has sent results so far; x"],
})
FILES = pd.DataFrame({
    "file_name": ["111100.csv", "notes.txt", "111601.csv", "111602.csv"],
    "status": ["rejected", "ignored", "loaded", "unchanged"],
    "school_urn": ["111100", "", "111601", "111602"],
    "reason": ["111100.csv: a file of the bundled demo", "not an extract (.txt)",
               "not replaced: Reading / NGRT: 3 rows for 40 the school had", ""],
    "changes": ["", "", "111601 Reading: 40 pupils added\n111601 Maths: held, not applied: 3 of 40 pupils left "
                "(to apply it on purpose: microtrials accept 111601.csv)", None],
})


def facts(**kwargs) -> summary.RunFacts:
    return summary.RunFacts(**{"messages": MESSAGES, "progress": PROGRESS, "evidence": EVIDENCE, "files": FILES,
                               "new_feedback": [("111601", Path("/fb/111601/111601-what-to-fix.csv"))],
                               "missing_settings": ["send_to"], **kwargs})


def test_the_to_do_list_names_everything_in_order():
    lines = summary.todo_lines(facts())
    assert lines == [
        "to do:",
        "  registry:",
        "    error: 'Philosophy for Children' is not in the registry: add it, or correct the name",
        "    error: trials.csv line 6, column start_date: '2026-13-01' is not a date",
        "    awaited for Reciprocal reading (2026 Summer): 111114, 111295 (awaiting 2 of 6 schools)",
        "    warning: school 111601 is not in the plan for Reciprocal reading",
        "  trials:",
        "    Reciprocal reading / NGRT / 2026 Summer: interim, awaiting 111114, 111295",
        "    Maths mastery / PUMA: published",
        "    Tutoring / GL: not estimable: only one school has sent results so far",
        "  files that loaded or replaced nothing:",
        "    rejected 111100.csv: a file of the bundled demo",
        "    ignored notes.txt: not an extract (.txt)",
        "    111601.csv (loaded): not replaced: Reading / NGRT: 3 rows for 40 the school had",
        "    held 111601.csv: 111601 Maths: held, not applied: 3 of 40 pupils left (to apply it on purpose: "
        "microtrials accept 111601.csv)",
        "  new feedback for schools (private: send each school only its own):",
        "    111601: /fb/111601/111601-what-to-fix.csv",
        "  settings:",
        "    schools are not told send_to: fill it in under [schools] in microtrials.toml (the \"Send your "
        "results\" page says \"ask your authority's data team\" until then)",
    ]
    markdown = summary.as_markdown(lines)
    assert "**registry**" in markdown and "- Maths mastery / PUMA: published" in markdown


def test_a_held_change_is_listed_once():
    """Red team: a held file was listed twice, once by its reason (which holds the held change) and once
    as "held <file>"; a partly held file keeps its other reason."""
    held = ("111601 Maths: held, not applied: it would replace 40 pupils by 3, more than half of them gone; the "
            "earlier 40 pupils stay as they were (to apply it on purpose: microtrials accept 111601.csv)")
    files = pd.DataFrame({
        "file_name": ["111601.csv", "111602.csv"], "status": ["held", "partly held"],
        "school_urn": ["111601", "111602"],
        "reason": [held, f"not replaced: Reading / NGRT: too few rows; {held.replace('111601 ', '111602 ')}"],
        "changes": [held, f"111602 Reading: 30 pupils added\n{held.replace('111601 ', '111602 ')}"]})
    lines = summary.file_lines(facts(files=files))
    assert lines == ["  files that loaded or replaced nothing:",
                     f"    held 111601.csv: {held}",
                     "    111602.csv (partly held): not replaced: Reading / NGRT: too few rows",
                     f"    held 111602.csv: {held.replace('111601 ', '111602 ')}"]


def test_the_demo_s_unregistered_trial_is_a_demonstration_not_an_error():
    lines = summary.todo_lines(facts(demo=True))
    demo = [line for line in lines if "Philosophy for Children" in line]
    assert demo == ["    demonstration: 'Philosophy for Children' is left out of the demo's registry on purpose, to show "
                    "what happens to an unregistered trial: its rows are loaded, never published as evidence"]
    assert not any("settings" in line for line in lines)  # the demo has no workspace to fill in
    assert not any("error" in line for line in lines if "Philosophy" in line)


def test_long_sections_are_cut_with_where_the_rest_is():
    many = pd.DataFrame({"level": ["warning"] * 14, "rule": ["x"] * 14, "intervention": [""] * 14,
                         "school_urn": [""] * 14, "message": [f"school 1116{i:02d} is not in the plan" for i in range(14)]})
    lines = summary.registry_lines(facts(messages=many, progress=None, report="/pub/registry_report.csv"))
    assert len(lines) == 1 + summary.SHOWN + 1 and lines[-1] == "    ... and 4 more (all in /pub/registry_report.csv)"
    assert summary.todo_lines(summary.RunFacts()) == ["to do: nothing"]


REGISTRY = (b"intervention,outcome_measure,round,start_date,end_date,results_due,schools\n"
            b"Reciprocal reading,NGRT standardised score,2026 Summer,2026-04-20,2026-07-17,,111109 111114\n"
            b"Reciprocal reading,NGRT standardised score,2026 Autumn,2026-09-07,2026-12-18,2027-01-29,111109\n"
            b"Maths mastery,PUMA standardised score,,2026-09-07,,not a date,111114\n")


def test_each_round_s_deadline_is_end_date_plus_days_or_its_results_due_column():
    registry = read_registry(REGISTRY)
    due = {r.round or r.intervention: results_due(r, 21) for r in registry.rounds}
    assert due == {"2026 Summer": date(2026, 8, 7), "2026 Autumn": date(2027, 1, 29), "Maths mastery": None}
    assert [p.column for p in registry.problems] == ["results_due"]  # reported, and the round is kept
    assert "'not a date' is not a date" in registry.problems[0].message and "the round is kept" in registry.problems[0].message


def site_with(contact: workspace.Contact) -> dict[str, bytes]:
    sending = workspace.send_details(contact, list(read_registry(REGISTRY).rounds), date(2026, 10, 1))
    return build_site(small_evidence(), {}, small_load_report(), "d", "r", sending=sending)


def help_sheet(files: dict[str, bytes]) -> dict[str, str]:
    name = next(n for n in files if n.startswith("send/reciprocal") and n.endswith(".xlsx"))
    sheet = openpyxl.load_workbook(io.BytesIO(files[name]))["How to fill"]
    return {row[0]: row[1] for row in sheet.iter_rows(min_row=2, values_only=True)}


def test_the_send_page_and_templates_carry_the_route_contact_and_deadlines():
    contact = workspace.Contact("https://transfer.example.gov.uk/drop/microtrials", "data@example.gov.uk",
                                "Research data team", 14)
    files = site_with(contact)
    page = files["send-your-results.html"].decode()
    assert '<a href="https://transfer.example.gov.uk/drop/microtrials">' in page
    assert 'href="mailto:data@example.gov.uk"' in page and "Research data team" in page
    assert "Reciprocal reading (2026 Autumn): results due by <strong>29 January 2027</strong>" in page
    assert "Reciprocal reading (2026 Summer): results were due 31 July 2026" in page
    assert "Maths mastery: no deadline set yet" in page
    assert "ask your authority" not in page.split("Maths mastery: no deadline")[0]
    notes = help_sheet(files)
    assert notes["Send it to"].startswith("https://transfer.example.gov.uk/drop/microtrials")
    assert notes["Results due"] == "2026 Autumn: by 29 January 2027; 2026 Summer: was due 31 July 2026"
    assert notes["Questions"] == "data@example.gov.uk (Research data team)"


def test_without_a_route_the_page_and_templates_say_ask_the_data_team():
    files = site_with(workspace.Contact())
    page = files["send-your-results.html"].decode()
    assert "ask your authority's data team for its secure route" in page
    assert "Questions: ask your authority's data team" in page
    assert help_sheet(files)["Send it to"].startswith("ask your authority's data team")
