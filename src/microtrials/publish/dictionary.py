"""The published data dictionary: every column of every published file, with a plain label, meaning and unit.

``ENTRIES`` is the single list; ``site.build_site`` publishes only columns listed here (a column
without an entry is left out and reported), so ``data_dictionary.csv`` always covers the files.
Which file is for people and which for machines is in ``FILES``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from microtrials.guidance import SUPPRESSION_THRESHOLD


@dataclass(frozen=True)
class Entry:
    """One published column."""

    column: str
    label: str
    meaning: str
    unit: str
    files: str


EVIDENCE = "evidence_table.csv"
SCHOOLS = "<trial>/schools.csv"
LOAD = "load_report.csv"
TEMPLATE = "send/<trial>-template.csv"
DICTIONARY = "data_dictionary.csv"
REGISTRY = "registry_report.csv"

#: What each published file is for: machines (full precision) or people (rounded, plain headers).
FILES: tuple[tuple[str, str], ...] = (
    (EVIDENCE, "For machines and analysts: one row per trial, every figure at full precision "
               "(p-values unrounded, written without scientific notation)."),
    ("evidence_table.xlsx", "For people: the same rows with plain headers, figures rounded for reading, "
                            "p-values to 4 decimals and \"<0.0001\" below that."),
    (SCHOOLS, "For machines and analysts: each school's figures for one trial, full precision, "
              "small groups blanked."),
    (LOAD, "For people: each school file received, problem files first, with plain headers."),
    (REGISTRY, "For people: what the files mean for the registered trials (trials.csv): names not in the "
               "registry, schools not in the plan, rounds still awaiting planned schools."),
    (TEMPLATE, "For schools: an empty extract with the right headers (also as .xlsx with drop-down lists)."),
    (DICTIONARY, "This dictionary."),
)

_E, _S = EVIDENCE, SCHOOLS
ENTRIES: tuple[Entry, ...] = (
    # --- the evidence table -------------------------------------------------------------------
    Entry("intervention", "Intervention", "The approach being trialled, as schools name it.", "text", f"{_E}; {_S}"),
    Entry("outcome_measure", "Measured by", "The test used to compare the two groups.", "text", f"{_E}; {_S}"),
    Entry("round", "Round", "Which registered round of the trial the figures come from (from the trial registry); "
          "\"all rounds\" for the row that analyses every round together (round as a fixed effect, schools "
          "within rounds). Blank when there is no registry.", "text", _E),
    Entry("outcome_role", "Primary or secondary", "primary: the outcome registered before results arrived, the "
          "headline; secondary: another outcome registered in advance. Outcomes nobody registered are not "
          "published.", "code", _E),
    Entry("school_round", "School's round", "The round this school's pupils took part in (a school in two rounds "
          "has a row for each in the \"all rounds\" results).", "text", _S),
    Entry("description", "What it is", "A one-line description of the intervention, from the trial registry.",
          "text", _E),
    Entry("toolkit_strand", "Toolkit strand", "The Education Endowment Foundation Toolkit strand this "
          "intervention belongs to.", "text", _E),
    Entry("schools", "Schools", "Schools with at least one pupil analysed.", "schools", _E),
    Entry("schools_both_arms", "Schools with both groups", "Schools with analysed pupils in both the "
          "intervention and the control group.", "schools", _E),
    Entry("pupils_randomised", "Pupils randomised", "Pupils put at random into a group (blank below "
          f"{SUPPRESSION_THRESHOLD}).", "pupils", _E),
    Entry("pupils_analysed", "Pupils analysed", "Pupils whose results were compared (blank below "
          f"{SUPPRESSION_THRESHOLD}).", "pupils", _E),
    Entry("attrition_pct", "Pupils with no result", "Share of randomised pupils who were not analysed: "
          "100 x (randomised - analysed) / randomised.", "percent", _E),
    Entry("effect_size", "Effect size", "How much better the intervention group did than the control group, in "
          "standard deviations of the test (Hedges' g), after allowing for earlier scores and schools.",
          "standard deviations", _E),
    Entry("ci_low", "Lowest likely effect", "Lower end of the 95% confidence interval of the effect size "
          "(in schools.csv: of that school's effect).", "standard deviations", f"{_E}; {_S}"),
    Entry("ci_high", "Highest likely effect", "Upper end of the 95% confidence interval of the effect size "
          "(in schools.csv: of that school's effect).", "standard deviations", f"{_E}; {_S}"),
    Entry("p_value", "p-value", "Chance of a difference at least this large if the intervention did nothing. "
          "Full precision here; rounded to 4 decimals (\"<0.0001\" below) on the pages and in the .xlsx.",
          "probability (0 to 1)", _E),
    Entry("months_progress", "Months of extra progress", "The effect size converted to months of additional "
          "progress with the Education Endowment Foundation's table.", "months", _E),
    Entry("tau", "Spread between schools", "Standard deviation of the effect between schools (tau), on the "
          "effect-size scale, from the same model as the effect size.", "standard deviations", _E),
    Entry("i2", "Variation not due to chance", "I-squared: share of the variation between schools' results that "
          "is not due to chance.", "percent", _E),
    Entry("pi_low", "New school: lowest", "Lower end of the 95% prediction interval: the effect a new school "
          "could expect.", "standard deviations", _E),
    Entry("pi_high", "New school: highest", "Upper end of the 95% prediction interval.", "standard deviations", _E),
    Entry("status", "Status", "published (complete), interim (schools still to send results), not_estimable "
          "(no figures yet: the reason is first in notes) or not_refreshed (last run's figures kept: the "
          "reason is in notes).", "code", _E),
    Entry("p_new_school_benefits", "Chance a new school benefits", "Probability that the intervention beats "
          "the control group in a new school, from the prediction interval's distribution.",
          "probability (0 to 1)", _E),
    Entry("fsm_effect_size", "Effect size, free-school-meal pupils", "The effect size for pupils eligible for free "
          "school meals only; blank when too few.", "standard deviations", _E),
    Entry("fsm_ci_low", "FSM: lowest likely effect", "Lower end of its 95% confidence interval.",
          "standard deviations", _E),
    Entry("fsm_ci_high", "FSM: highest likely effect", "Upper end of its 95% confidence interval.",
          "standard deviations", _E),
    Entry("evidence_strength", "Evidence strength", "How secure the finding is, 0 to 5 (like the Education "
          "Endowment Foundation's padlocks); 2 or fewer is not yet secure.", "padlocks (0 to 5)", _E),
    Entry("baseline_difference", "Baseline difference between the groups", "How far apart the two groups' earlier "
          "scores were before the intervention started (WWC Hedges' g): below 0.05 very similar, to 0.10 a little, "
          "above that noticeably (read the result with caution).", "standard deviations", _E),
    Entry("notes", "Notes for evaluators", "Statistical notes and caveats, in full.", "text", _E),
    Entry("fsm_months_progress", "Months of extra progress, FSM pupils", "The FSM effect size in months.", "months",
          _E),
    Entry("national_months", "National Toolkit figure", "The Education Endowment Foundation Toolkit's months of "
          "progress for this strand, nationally.", "months", _E),
    Entry("cost_per_pupil", "Cost per pupil", "Approximate cost per pupil per year, from the trial registry.",
          "pounds", _E),
    Entry("cost_rating", "Cost rating", "Cost on the Education Endowment Foundation Toolkit's scale, from the cost "
          "per pupil per year: £ under £80, ££ up to £200, £££ up to £720, ££££ up to £1,200, £££££ above.",
          "£ signs (1 to 5)", _E),
    Entry("verdict", "Verdict", "One line in the Toolkit's manner from the months, padlocks, cost and status, e.g. "
          "\"Moderate impact for very low cost, based on limited local evidence.\"", "text", "evidence_table.xlsx"),
    Entry("padlocks", "Padlocks", "The evidence strength as the pages show it: a provisional (interim) result's is "
          "capped at 2.", "padlocks (0 to 5)", "evidence_table.xlsx"),
    Entry("cost", "Cost", "The cost rating in £ signs and words, e.g. \"£ very low cost\".", "text",
          "evidence_table.xlsx"),
    Entry("suppressed", "Why figures are blank", "Why figures in this row are not published (small groups, "
          "see the disclosure rule); blank when all are published.", "text", f"{_E}; {_S}"),
    # --- per school ---------------------------------------------------------------------------
    Entry("school_urn", "School (URN)", "The school's Unique Reference Number.", "text", _S),
    Entry("n_intervention", "Pupils in the intervention group", "Analysed pupils in the intervention group.",
          "pupils", _S),
    Entry("n_control", "Pupils in the control group", "Analysed pupils in the control group.", "pupils", _S),
    Entry("g", "School on its own", "This school on its own: its own comparison, allowing for earlier "
          "scores, divided by the trial's total standard deviation: same scale as effect_size.",
          "standard deviations", _S),
    Entry("eb_g", "School's effect, adjusted", "The school's effect from the trial's model: the overall result "
          "plus this school's estimated difference from it, pulled towards the overall result in proportion to "
          "its uncertainty.", "standard deviations", _S),
    Entry("note", "Note", "Plain words about this school, e.g. \"one arm only (23 pupils in intervention)\".",
          "text", _S),
    # --- the public load report ---------------------------------------------------------------
    Entry("File", "File", "\"file N from school <URN>\": a file's own name is never published (it could carry "
          "a pupil's name, in any script).", "text", LOAD),
    Entry("School URN", "School URN", "The URN the file is for (in registry_report.csv: the school(s) concerned, "
          "the schools still awaited, or those withdrawn).", "text", f"{LOAD}; {REGISTRY}"),
    Entry("Status", "Status", "In plain words: rejected (nothing loaded), partly loaded (some rows set aside), "
          "loaded with warnings, ignored (not a school file), withdrawn (the school left the trial), replaced by a "
          "later file from the school, unchanged since it was last loaded, or loaded.",
          "text", LOAD),
    Entry("What went wrong", "What went wrong", "Why the file or some of its rows were set aside, and what to do. "
          "No numbers of rows or pupils are published (they would reveal small schools' figures).", "text", LOAD),
    Entry("Warnings", "Warnings", "What was odd but loaded, e.g. \"read as Windows-1252\" or an optional value "
          "blanked because it was not understood.", "text", LOAD),
    Entry("Trials", "Trials", "The trials the file holds: a name only when it is in the registry (with no registry: "
          "when sent for at least 10 pupils by each of at least 2 schools); otherwise \"an unregistered trial name "
          "(not shown)\", or how many names were not shown.", "text", LOAD),
    Entry("Columns dropped", "Columns dropped", "How many columns outside the format were dropped unread; their "
          "headers are never published (they may hold personal data).", "text", LOAD),
    # --- the registry report -------------------------------------------------------------------
    Entry("Trial", "Trial", "The registered intervention; blank for a name a school used that is not in the "
          "registry (never published: it could be a pupil's details in the wrong column).", "text", REGISTRY),
    Entry("Round", "Round", "The registered round still awaiting schools (blank for other messages).", "text",
          REGISTRY),
    Entry("What to do", "What to do", "What happened and what to do, in plain words.", "text", REGISTRY),
    # --- the extract template -----------------------------------------------------------------
    Entry("pupil_id", "Pupil reference", "The school's own pupil reference; scrambled on arrival, never "
          "published.", "text", TEMPLATE),
    Entry("arm", "Group", "intervention or control: the group the pupil was put in at random.", "code", TEMPLATE),
    Entry("outcome", "Result (after)", "The pupil's score on the outcome test; blank if they did not sit it.",
          "test score", TEMPLATE),
    Entry("baseline", "Earlier score", "The pupil's score before the intervention, on a comparable test.",
          "test score", TEMPLATE),
    Entry("fsm", "Free school meals", "Y if eligible for free school meals, N if not.", "code", TEMPLATE),
    Entry("gender", "Gender", "F or M, or blank.", "code", TEMPLATE),
    Entry("year_group", "Year group", "National Curriculum year; Reception is 0.", "year", TEMPLATE),
    Entry("send", "Special educational needs", "Y if on the SEN register, N if not.", "code", TEMPLATE),
    # --- the dictionary itself ----------------------------------------------------------------
    Entry("column", "Column", "The column's name as it appears in the file.", "text", DICTIONARY),
    Entry("plain label", "Plain label", "A short name for people.", "text", DICTIONARY),
    Entry("meaning", "Meaning", "What the column holds.", "text", DICTIONARY),
    Entry("unit", "Unit", "What the numbers count or measure.", "text", DICTIONARY),
    Entry("files", "Files", "The published files that have this column.", "text", DICTIONARY),
)

BY_COLUMN: dict[str, Entry] = {e.column: e for e in ENTRIES}
# Template and per-school files reuse evidence-table names (intervention, school_urn, round ...).
TEMPLATE_COLUMNS = ("school_urn", "pupil_id", "intervention", "outcome_measure", "arm", "outcome",
                    "baseline", "fsm", "gender", "year_group", "send", "round")


def label(column: str) -> str:
    """The plain label of a published column (the column name itself when it has no entry)."""
    entry = BY_COLUMN.get(column)
    return entry.label if entry else column


def known(columns) -> list[str]:
    """The columns among ``columns`` that the dictionary describes, in their order."""
    return [c for c in columns if c in BY_COLUMN]


def dictionary_frame() -> pd.DataFrame:
    """``data_dictionary.csv``: column, plain label, meaning, unit, files."""
    def files(entry: Entry) -> str:
        if entry.column in TEMPLATE_COLUMNS and TEMPLATE not in entry.files:
            return f"{entry.files}; {TEMPLATE}"
        return entry.files
    return pd.DataFrame(
        [(e.column, e.label, e.meaning, e.unit, files(e)) for e in ENTRIES],
        columns=["column", "plain label", "meaning", "unit", "files"],
    )
