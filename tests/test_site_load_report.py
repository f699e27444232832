"""The public load report: no counts (so no suppressed figure comes back), problem files first,
statuses in plain words, warnings shown, merged spellings listed, words never broken inside."""

from __future__ import annotations

import io
import re

import pandas as pd

from microtrials.publish.gate import trusting
from microtrials.publish.site import build_site, merged_spellings, public_load_report, without_counts
from tests.helpers.load_report import COUNTS, EVIDENCE, report


def site_files(load_report: pd.DataFrame, spellings: pd.DataFrame | None = None) -> dict[str, bytes]:
    return build_site(EVIDENCE, {}, load_report, "d", "r", spellings=spellings)


def public(files: dict[str, bytes]) -> tuple[bytes, bytes]:
    return files["load_report.csv"], files["load-report.html"]


def test_no_count_of_any_file_is_published():
    csv, page = public(site_files(report()))
    for values in COUNTS.values():
        for n in values:
            if n > 9:
                assert str(n).encode() not in csv and str(n).encode() not in page, n
    frame = pd.read_csv(io.BytesIO(csv), dtype=str, keep_default_na=False)
    assert not [c for c in frame.columns if "row" in c.casefold()]  # no "Rows read/loaded/set aside" columns
    # and no small count either: every number left is a URN ("file 1" and the number of dropped columns are not pupils)
    numbers = {m for cell in frame.drop(columns=["School URN", "File", "Columns dropped"]).to_numpy().ravel()
               for m in re.findall(r"\d+", str(cell))}
    assert numbers <= {"111109", "111135", "222230", "111201", "1252"}, numbers  # 1252: Windows-1252


def test_differencing_counts_changes_nothing_public():
    """Two warehouses that differ only in their counts publish the same load report."""
    other = report(rows_read=[5, 6, 7, 8], rows_loaded=[5, 2, 0, 1], rows_quarantined=[0, 4, 0, 7],
                   rows_with_warnings=[0, 0, 0, 1])
    assert public(site_files(report())) == public(site_files(other))


def test_one_school_pilot_shows_no_size():
    pilot = pd.DataFrame({"file_name": ["111601.csv"], "status": ["loaded"], "school_urn": ["111601"],
                          "trials": ["Pilot / KS2 reading"], "rows_read": [6], "rows_loaded": [6],
                          "rows_quarantined": [0], "quarantined_by_reason": [""], "rows_with_warnings": [0],
                          "warnings": [""], "columns_dropped": [""], "reason": [""]})
    gate = trusting(pd.DataFrame({"intervention": ["Pilot"], "outcome_measure": ["KS2 reading"]}))
    frame = public_load_report(pilot, gate)
    assert frame.iloc[0].to_dict() == {"File": "file 1 from school 111601", "School URN": "111601", "Status": "loaded",
                                       "What went wrong": "", "Warnings": "", "Trials": "Pilot / KS2 reading",
                                       "Columns dropped": ""}


def test_problem_files_first_in_plain_words_with_warnings():
    frame = public_load_report(report())
    assert frame["Status"].tolist() == ["rejected: nothing loaded", "partly loaded: some rows set aside",
                                        "partly loaded: some rows set aside", "loaded, with warnings"]
    assert frame["School URN"].tolist() == ["222230", "111135", "111201", "111109"]
    rejected = frame.iloc[0]["What went wrong"]
    assert rejected.startswith("columns may be swapped: the 'outcome' column has a different value in every row")
    assert "222230.csv" not in rejected  # the File column names it once
    assert frame.iloc[1]["What went wrong"] == ("rows set aside (arm not 'intervention' or 'control'): "
                                                "the data team will send the school its own list of rows to fix")
    assert "fewer loadable rows for the trial than the school's earlier delivery" in frame.iloc[2]["What went wrong"]
    assert frame.iloc[2]["Warnings"] == "gender not understood"
    assert frame.iloc[3]["Warnings"] == "read as Windows-1252"  # a file-level warning is shown


def test_a_loaded_file_with_no_row_loaded_is_rejected_and_ignored_entries_come_after_warnings():
    frame = pd.DataFrame({"file_name": ["111101.csv", "notes.txt", "111102.csv", "111103.csv"],
                          "status": ["loaded", "ignored", "loaded", "loaded"],
                          "school_urn": ["111101", "", "111102", "111103"],
                          "rows_read": [71, 0, 10, 10], "rows_loaded": [0, 0, 10, 10],
                          "rows_quarantined": [71, 0, 0, 0],
                          "quarantined_by_reason": ["arm not 'intervention' or 'control': 71", "", "", ""],
                          "warnings": ["", "", "", "read as Windows-1252"],
                          "reason": ["", "notes.txt: not an extract file: only .csv and .xlsx files are loaded", "",
                                     ""]})
    out = public_load_report(frame)
    assert out["Status"].tolist() == ["rejected: nothing loaded", "loaded, with warnings",
                                      "ignored: not a school file", "loaded"]
    assert out.iloc[2]["What went wrong"] == "not an extract file: only .csv and .xlsx files are loaded"


def test_unsafe_file_names_are_replaced_in_the_reasons_too():
    frame = report(file_name=["111109.csv", "111135.csv", "P2222300001 Smith John.csv", "111201.csv"])
    frame.loc[2, "reason"] = "P2222300001 Smith John.csv: the file is empty; send it again"
    out = public_load_report(frame)
    assert out.iloc[0]["File"] == "file 1 from school 222230"
    assert out.iloc[0]["What went wrong"] == "the file is empty; send it again"
    csv, page = public(site_files(frame))
    assert b"Smith" not in csv and b"Smith" not in page and b"P2222300001" not in page


def test_without_counts():
    assert without_counts("arm not understood: 3") == "arm not understood"
    assert without_counts("line 5: wrong number of values") == "some lines: wrong number of values"
    assert without_counts("the 'intervention' column has more different values (3) than the pupil_id column (1)") \
        == "the 'intervention' column has more different values than the pupil_id column"
    assert without_counts("the file holds rows for 2 schools (URNs 111109, 111112)") \
        == "the file holds rows for 2 schools (URNs 111109, 111112)"


def test_merged_spellings_listed_for_published_trials_only():
    spellings = pd.DataFrame({
        "intervention": ["Reciprocal reading", "Reciprocal reading", "P1111090007", "Reciprocal reading"],
        "outcome_measure": ["NGRT standardised score"] * 4,
        "delivered_intervention": ["Reciprocal reading", "reciprocal  Reading", "p1111090007", "Reciprocal reading"],
        "delivered_outcome_measure": ["NGRT standardised score"] * 3 + ["NGRT standardised  score"],
        "merged": [True, True, True, True]})
    assert merged_spellings(spellings, EVIDENCE) == ["'reciprocal  Reading' analysed as 'Reciprocal reading'",
                                                     "'NGRT standardised  score' analysed as 'NGRT standardised score'"]
    page = site_files(report(), spellings)["load-report.html"].decode()
    assert "spellings merged: <span class=\"spelling\">&#39;reciprocal  Reading&#39; analysed as " \
           "&#39;Reciprocal reading&#39;</span>" in page
    assert "1111090007" not in page
    assert "Spellings merged" not in site_files(report())["load-report.html"].decode()


def test_words_never_break_inside_themselves_only_long_tokens_do():
    frame = report()
    frame.loc[2, "reason"] = "222230.csv: the header school_urn;pupil_id;intervention is separated by semicolons"
    files = build_site(EVIDENCE, {}, frame, "d", "r")
    page = files["load-report.html"].decode()
    assert '<span class="token">school_urn;pupil_id;intervention</span>' in page
    assert "<span class=\"token\">Status" not in page
    css = files["index.html"].decode()
    assert "break-all" not in css
    assert re.search(r"th, td \{[^}]*overflow-wrap: normal", css)
    assert re.search(r"\.token \{ overflow-wrap: anywhere; \}", css)
