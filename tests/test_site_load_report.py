"""The public load report: no counts (so no suppressed figure comes back), problem files first,
statuses in plain words, warnings shown, merged spellings listed, words never broken inside."""

from __future__ import annotations

import io
import re

import pandas as pd

from microtrials.site import build_site, merged_spellings, public_load_report, without_counts

EVIDENCE = pd.DataFrame([dict(
    intervention="Reciprocal reading", outcome_measure="NGRT standardised score", schools=2, schools_both_arms=2,
    pupils_randomised=7191, pupils_analysed=7190, attrition_pct=0.0, effect_size=0.2, ci_low=0.1, ci_high=0.3,
    p_value=0.01, months_progress=3, tau=0.05, i2=10.0, pi_low=-0.1, pi_high=0.5, status="published",
    p_new_school_benefits=0.9, fsm_effect_size=None, fsm_ci_low=None, fsm_ci_high=None, evidence_strength=3,
    notes="", fsm_months_progress=None)])
# Distinctive counts: none of these numbers may appear anywhere in the public report.
COUNTS = {"rows_read": [4317, 2273, 3391, 5519], "rows_loaded": [4317, 2269, 0, 5513],
          "rows_quarantined": [0, 4, 0, 6], "rows_with_warnings": [0, 0, 0, 6]}


def report(**changes) -> pd.DataFrame:
    frame = pd.DataFrame({
        "file_name": ["111109.csv", "111135.csv", "222230.csv", "111201.csv"],
        "status": ["loaded", "loaded", "rejected", "unchanged"],
        "school_urn": ["111109", "111135", "222230", "111201"],
        "trials": ["Reciprocal reading / NGRT standardised score"] * 4,
        **COUNTS,
        "quarantined_by_reason": ["", "arm not 'intervention' or 'control': 4", "",
                                  "implausible value: 2; duplicate pupil row: 4"],
        "warnings": ["read as Windows-1252", "", "", "gender not understood: 6"],
        "columns_dropped": ["", "", "", "notes"],
        "reason": ["", "", "222230.csv: columns may be swapped: the 'outcome' column has 3391 different values in "
                   "3391 rows, as a column of pupil identifiers would; check each header and send the file again",
                   "not replaced: Reciprocal reading / NGRT standardised score: this file has 5513 loadable rows "
                   "for the trial, the school's earlier delivery 5519: the earlier rows are kept"],
    })
    for column, values in changes.items():
        frame[column] = values
    return frame


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
    # and no small count either: every number left is a URN
    numbers = {m for cell in frame.drop(columns=["School URN"]).to_numpy().ravel()
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
    frame = public_load_report(pilot, set())
    assert frame.iloc[0].to_dict() == {"File": "111601.csv", "School URN": "111601", "Status": "loaded",
                                       "What went wrong": "", "Warnings": "", "Trials": "Pilot / KS2 reading",
                                       "Columns dropped": ""}


def test_problem_files_first_in_plain_words_with_warnings():
    frame = public_load_report(report(), set())
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
    out = public_load_report(frame, set())
    assert out["Status"].tolist() == ["rejected: nothing loaded", "loaded, with warnings",
                                      "ignored: not a school file", "loaded"]
    assert out.iloc[2]["What went wrong"] == "not an extract file: only .csv and .xlsx files are loaded"


def test_unsafe_file_names_are_replaced_in_the_reasons_too():
    frame = report(file_name=["111109.csv", "111135.csv", "P2222300001 Smith John.csv", "111201.csv"])
    frame.loc[2, "reason"] = "P2222300001 Smith John.csv: the file is empty; send it again"
    out = public_load_report(frame, set())
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
    frame = report(file_name=["111109_reciprocal_reading_2026-11-20_final_v2.csv", "111135.csv", "222230.csv",
                              "111201.csv"])
    files = build_site(EVIDENCE, {}, frame, "d", "r")
    page = files["load-report.html"].decode()
    assert '<span class="token">111109_reciprocal_reading_2026-11-20_final_v2.csv</span>' in page
    assert "<span class=\"token\">Status" not in page
    css = files["index.html"].decode()
    assert "break-all" not in css
    assert re.search(r"th, td \{[^}]*overflow-wrap: normal", css)
    assert re.search(r"\.token \{ overflow-wrap: anywhere; \}", css)
