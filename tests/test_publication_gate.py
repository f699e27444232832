"""The publication gate: names planted in a hostile folder (file names, dropped headers, cells) in Latin,
Cyrillic and Arabic script never reach any published byte (CSV, HTML, xlsx XML, SVG text, paths)."""

from __future__ import annotations

import csv
import html
import io
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from microtrials.publish import gate as publication_gate
from microtrials.publish import publish
from microtrials.publish.evidence_table import COLUMNS as EVIDENCE_COLUMNS
from microtrials.publish.gate import Origin
from microtrials.publish.site import build_site, gated_text, public_load_report, registry_report
from tests.conftest import REPO_ROOT, TEST_PUPIL_KEY

SAMPLE = REPO_ROOT / "data" / "extracts"
REGISTRY = REPO_ROOT / "data" / "trials.csv"

LATIN, CYRILLIC, ARABIC = "Jane Smith", "Иван Петров", "جين سميث"
#: Every word planted anywhere in the hostile folder; none may appear in any published byte.
#: With a registry, two schools send this name as the intervention on all of their rows (30 and more each).
WIDE = "Anna Kowalczyk"
PLANTED = ["Kowalczyk", "Jane", "Smith", "Иван", "Петров", "جين", "سميث", "Mary Jones", "Wojcik", "Zofia", "2015-03-14",
           "Ahmed", "أحمد", "Ольга", "Tilly", "Hugo"]


def tagged(name: str, hidden: str) -> str:
    """``name`` with ``hidden`` spelled after it in Unicode tag characters (U+E0020-E007E: invisible on a page)."""
    return name + "".join(chr(0xE0000 + ord(c)) for c in hidden)


def untagged(text: str) -> str:
    """Tag characters read as the ASCII they spell (how a planted name hidden in them is found)."""
    return "".join(chr(ord(c) - 0xE0000) if 0xE0020 <= ord(c) <= 0xE007E else c for c in text)


def published_texts(out: Path) -> dict[str, str]:
    """Every published file as text: paths too, xlsx members unzipped, HTML entities decoded."""
    texts: dict[str, str] = {}
    for path in sorted(out.rglob("*")):
        relative = str(path.relative_to(out))
        texts[f"path:{relative}"] = relative
        if not path.is_file():
            continue
        data = path.read_bytes()
        if path.suffix == ".xlsx":
            with zipfile.ZipFile(io.BytesIO(data)) as book:
                for member in book.namelist():
                    texts[f"{relative}!{member}"] = html.unescape(book.read(member).decode("utf-8", "replace"))
        else:
            texts[relative] = html.unescape(data.decode("utf-8", "replace"))
    return texts


def planted_in(texts: dict[str, str], planted: list[str] = PLANTED) -> list[tuple[str, str]]:
    return [(where, name) for where, text in texts.items() for name in planted
            if name.casefold() in untagged(text).casefold()]


def files_texts(files: dict[str, bytes]) -> dict[str, str]:
    texts = {f"path:{name}": name for name in files}
    for name, data in files.items():
        if name.endswith(".xlsx"):
            with zipfile.ZipFile(io.BytesIO(data)) as book:
                texts.update({f"{name}!{m}": html.unescape(book.read(m).decode("utf-8", "replace"))
                              for m in book.namelist()})
        else:
            texts[name] = html.unescape(data.decode("utf-8", "replace"))
    return texts


# --- the gate itself ----------------------------------------------------------------------------

def carriers(*rows: tuple[str, str, str, int]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["origin", "name", "school_urn", "pupils"])


def test_the_gate_decides_by_origin():
    gate = publication_gate.build(None, carriers(
        ("trial", "Reading boost", "111101", 12), ("trial", "reading  BOOST", "111102", 10),  # 2 schools of 10+
        ("trial", "Jane Smith", "111101", 1), ("trial", "One school", "111101", 40),
        ("trial", "Nine pupils", "111101", 5), ("trial", "Nine pupils", "111102", 4),
        ("trial", "Ten in all", "111101", 5), ("trial", "Ten in all", "111102", 5)))
    assert gate.show("Reading Boost", Origin.TRIAL) == "Reading Boost"
    for name in ("Jane Smith", "One school", "Nine pupils", "Ten in all", "Иван Петров"):
        assert gate.show(name, Origin.TRIAL) is None, name
    assert gate.show("Reading boost", Origin.OUTCOME) is None  # carried as a trial name, not as an outcome
    for origin in (Origin.FILE_NAME, Origin.DROPPED_COLUMN, Origin.CELL):
        assert gate.show("111101.csv", origin) is None
    assert gate.show("111101", Origin.URN) == "111101" and gate.show("Jane Smith", Origin.URN) is None
    assert gate.show("Results for the autumn term", Origin.OURS) == "Results for the autumn term"
    # a shown name never carries text hidden in invisible characters (tags, zero-width, direction, controls)
    hidden = tagged("Reading\u200b Boost\u202e\x07", "Jane Smith")
    assert gate.show(hidden, Origin.TRIAL) == "Reading Boost"


def test_registered_names_aliases_outcomes_and_rounds_are_shown():
    from microtrials.ingest.registry import load_registry

    gate = publication_gate.build(load_registry(REGISTRY), None)
    assert gate.allows("reciprocal reading programme", Origin.TRIAL)  # an alias
    assert gate.allows("NGRT standardised score", Origin.OUTCOME) and gate.allows("2026 Summer", Origin.ROUND)
    assert gate.allows("all rounds", Origin.ROUND)
    assert not gate.allows("Jane Smith", Origin.TRIAL) and not gate.allows("Jane Smith", Origin.ROUND)


def test_quoted_names_in_our_sentences_pass_the_gate():
    gate = publication_gate.build(None, carriers(("outcome", "KS2 reading", "111101", 20),
                                                 ("outcome", "KS2 reading", "111102", 20)))
    assert gated_text("'Jane Smith' is not a registered outcome of X ('KS2 reading')", gate) == \
        "a name not shown here is not a registered outcome of X ('KS2 reading')"


def test_with_a_registry_only_registered_names_are_shown_however_widely_carried():
    """Red team: a pupil's name typed as the intervention by two schools for 20 rows each passed the
    10-pupils-in-2-schools rule and was published in load_report.csv and registry_report.csv."""
    from microtrials.ingest.registry import load_registry, read_registry

    wide = carriers(("trial", "Anna Kowalczyk", "111101", 20), ("trial", "Anna Kowalczyk", "111102", 20),
                    ("outcome", "Anna Kowalczyk", "111101", 20), ("outcome", "Anna Kowalczyk", "111102", 20),
                    ("round", "Anna Kowalczyk", "111101", 20), ("round", "Anna Kowalczyk", "111102", 20))
    with_registry = publication_gate.build(load_registry(REGISTRY), wide)
    for origin in publication_gate.NAMES:
        assert not with_registry.allows("Anna Kowalczyk", origin), origin
    assert with_registry.allows("Reciprocal reading", Origin.TRIAL) and with_registry.has_registry
    assert with_registry.withheld_reason == "not in the registry"
    # no trials.csv: who carries a name decides
    gate = publication_gate.build(None, wide)
    assert not gate.has_registry and gate.allows("Anna Kowalczyk", Origin.TRIAL)
    # a new workspace's header-only trials.csv is a registry with no trial yet: no delivered name is
    # shown (red team L6: its evidence table holds no unregistered trial, and its gate agrees)
    empty = read_registry(b"intervention,outcome_measure,round,start_date,schools\n")
    gate = publication_gate.build(empty, wide)
    assert gate.has_registry and not gate.allows("Anna Kowalczyk", Origin.TRIAL)
    assert publication_gate.names_text(with_registry, [("Reciprocal reading", "NGRT standardised score"),
                                                       ("Anna Kowalczyk", "NGRT standardised score")]) == \
        "Reciprocal reading / NGRT standardised score; an unregistered trial name (not shown)"


# --- the public load report ---------------------------------------------------------------------

def hostile_report() -> pd.DataFrame:
    return pd.DataFrame({
        "file_name": [f"{CYRILLIC} 111375.csv", f"{ARABIC} 111109.csv", "111112.csv", f"{LATIN}.txt"],
        "status": ["loaded", "loaded", "loaded", "ignored"],
        "school_urn": ["111375", "111109", "111112", ""],
        "trials": ["Reciprocal reading / NGRT standardised score",
                   f"Reciprocal reading / NGRT standardised score; {LATIN} / NGRT standardised score",
                   f"Maths mastery / {CYRILLIC}", ""],
        "rows_read": [30, 30, 30, 0], "rows_loaded": [30, 30, 30, 0], "rows_quarantined": [0, 0, 0, 0],
        "quarantined_by_reason": ["", "", "", ""], "rows_with_warnings": [0, 0, 0, 0],
        "warnings": [f"{CYRILLIC} 111375.csv: read as Windows-1252", "", "", ""],
        "columns_dropped": [f"{LATIN} DOB 2015-03-14", f"{ARABIC}, notes", "", ""],
        "reason": ["", "", "", f"{LATIN}.txt: not an extract file: only .csv and .xlsx files are loaded"],
    })


def test_file_names_never_dropped_headers_counted_trial_names_gated():
    gate = publication_gate.trusting(pd.DataFrame({"intervention": ["Reciprocal reading", "Maths mastery"],
                                                   "outcome_measure": ["NGRT standardised score", "PUMA"]}))
    out = public_load_report(hostile_report(), gate)
    assert set(out["File"]) == {"file 1 from school 111109", "file 1 from school 111375",
                                "file 1 from school 111112", "file 1 with no school URN"}
    by_urn = out.set_index("School URN")
    assert by_urn.loc["111375", "Columns dropped"] == "1 column that may hold personal data (not loaded, not shown)"
    assert by_urn.loc["111109", "Columns dropped"].startswith("2 columns that may hold personal data")
    assert by_urn.loc["111109", "Trials"] == ("Reciprocal reading / NGRT standardised score; 1 trial name not shown "
                                              "(not registered, and not sent for 10 or more pupils by each of 2 or more schools)")
    assert by_urn.loc["111112", "Trials"].startswith("1 trial name not shown")
    assert planted_in({"report": out.to_csv()}) == []


def test_every_byte_of_a_built_site_is_free_of_the_planted_names():
    evidence = pd.DataFrame([dict(
        intervention=name, outcome_measure="NGRT standardised score", schools=2, schools_both_arms=2,
        pupils_randomised=40, pupils_analysed=40, attrition_pct=0.0, effect_size=0.2, ci_low=0.1, ci_high=0.3,
        p_value=0.01, months_progress=3, tau=0.05, i2=10.0, pi_low=-0.1, pi_high=0.5, status="published",
        p_new_school_benefits=0.9, fsm_effect_size=None, fsm_ci_low=None, fsm_ci_high=None, evidence_strength=3,
        notes="", fsm_months_progress=None) for name in ("Reciprocal reading", LATIN, CYRILLIC, ARABIC)])
    gate = publication_gate.build(None, carriers(("trial", "Reciprocal reading", "111109", 20),
                                                 ("trial", "Reciprocal reading", "111375", 20),
                                                 ("outcome", "NGRT standardised score", "111109", 20),
                                                 ("outcome", "NGRT standardised score", "111375", 20),
                                                 ("trial", LATIN, "111109", 1)))
    registry_rows = pd.DataFrame([
        {"Trial": LATIN, "Round": "", "School URN": "111109",
         "What to do": f"'{LATIN}' is not in the registry: add it, or correct the name (12 rows from school 111109)"},
        {"Trial": "Reciprocal reading", "Round": CYRILLIC, "School URN": "111109",
         "What to do": f"'{ARABIC}' is not a registered outcome of Reciprocal reading ('2025 Autumn')"}])
    spellings = pd.DataFrame([{"intervention": "Reciprocal reading", "outcome_measure": "NGRT standardised score",
                               "delivered_intervention": LATIN, "delivered_outcome_measure": "NGRT standardised score",
                               "merged": True}])
    problems: list[str] = []
    files = build_site(evidence, {}, hostile_report(), "d", "r", problems=problems, registry_rows=registry_rows,
                       spellings=spellings, gate=gate)
    assert planted_in(files_texts(files)) == []
    assert b"12 rows" not in files["registry_report.csv"]  # a count of one school's rows is a count of pupils
    shown = pd.read_csv(io.BytesIO(files["evidence_table.csv"]), encoding="utf-8-sig")
    assert shown["intervention"].tolist() == ["Reciprocal reading"]
    assert any("3 trial row(s) not published" in p for p in problems)


def test_with_a_registry_no_byte_holds_an_unregistered_name_two_schools_sent():
    from microtrials.ingest import registry as reg

    name, outcome = WIDE, "NGRT standardised score"
    wide = carriers(*[(o, n, urn, 20) for urn in ("111109", "111375") for o, n in
                      (("trial", name), ("trial", "Reciprocal reading"), ("outcome", outcome))])
    gate = publication_gate.build(reg.load_registry(REGISTRY), wide)
    report = hostile_report()
    report.loc[0, "trials"] = f"Reciprocal reading / {outcome}; {name} / {outcome}"
    report.loc[1, "trials"] = f"{name} / {outcome}"
    report.loc[1, "reason"] = f"not loaded: {name.upper()} / {outcome}: its scores are on another scale"
    report.loc[1, "warnings"] = f"111109 {name}  2025 Autumn: held, not applied: it would replace 30 pupils by 3"
    matched = reg.match_deliveries(reg.load_registry(REGISTRY), pd.DataFrame(
        {"intervention": [name, name], "outcome_measure": [outcome] * 2, "school_urn": ["111109", "111375"],
         "rows": [20, 20]}))
    assert f"'{name}' is not in the registry" in matched.messages[0].text  # the officer's own message names it
    registry_rows = registry_report(reg.messages_frame(matched.messages), None)
    files = build_site(pd.DataFrame(columns=EVIDENCE_COLUMNS), {}, report, "d", "r",
                       registry_rows=registry_rows, gate=gate)
    assert planted_in(files_texts(files)) == []
    public = pd.read_csv(io.BytesIO(files["registry_report.csv"]), encoding="utf-8-sig", dtype=str,
                         keep_default_na=False)
    assert public.to_dict("records") == [{
        "Trial": "", "Round": "", "School URN": "111109 111375",
        "What to do": "an unregistered intervention name from schools 111109, 111375 (not shown here: it could be a "
                      "pupil's details in the wrong column); check the files' intervention column, then correct it "
                      "or add the intervention to trials.csv (loaded, not published as evidence)"}]
    load = pd.read_csv(io.BytesIO(files["load_report.csv"]), encoding="utf-8-sig", dtype=str,
                       keep_default_na=False).set_index("School URN")
    assert load.loc["111375", "Trials"] == f"Reciprocal reading / {outcome}; an unregistered trial name (not shown)"
    assert load.loc["111109", "What went wrong"] == f"not loaded: a name not shown here / {outcome}: its scores are on " \
        "another scale"


# --- a whole run on a hostile folder ------------------------------------------------------------

def _rewrite(path: Path, change) -> None:
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    change(rows)
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    path.write_text(out.getvalue(), encoding="utf-8")


def _add_column(header: str, value: str):
    def change(rows):
        rows[0].append(header)
        for row in rows[1:]:
            row.append(value)
    return change


def _set_cell(column: str, value: str, row: int = 3):
    def change(rows):
        rows[row][rows[0].index(column)] = value
    return change


def _set_column(column: str, value: str):
    def change(rows):
        for row in rows[1:]:
            row[rows[0].index(column)] = value
    return change


def hostile_folder(root: Path, registry: bool) -> Path:
    """The sample extracts with names planted in every place a school's file can carry them."""
    extracts = root / "extracts"
    shutil.copytree(SAMPLE, extracts)
    if registry:
        shutil.copy(REGISTRY, root / "trials.csv")
    _rewrite(extracts / "111135.csv", _add_column(f"{LATIN} DOB 2015-03-14", "x"))
    _rewrite(extracts / "111183.csv", _add_column(CYRILLIC, "y"))
    _rewrite(extracts / "111229.csv", _add_column(ARABIC, "z"))
    _rewrite(extracts / "111280.csv", _set_cell("intervention", LATIN))
    _rewrite(extracts / "111304.csv", _set_cell("intervention", CYRILLIC))
    _rewrite(extracts / "111311.csv", _set_cell("intervention", ARABIC))
    _rewrite(extracts / "111353.csv", _set_cell("outcome_measure", "Mary Jones"))
    _rewrite(extracts / "111359.csv", _set_cell("school_urn", "Zofia Wojcik"))
    _rewrite(extracts / "111397.csv", _add_column("round", ""))
    _rewrite(extracts / "111397.csv", _set_cell("round", "Ольга Ahmed"))
    _rewrite(extracts / "111435.csv", _set_cell("arm", "أحمد"))
    _rewrite(extracts / "111448.csv", _set_cell("outcome", "Jane"))
    # names hidden in invisible tag characters after a registered (and widely carried) name, on every row
    _rewrite(extracts / "111100.csv", _set_column("intervention", tagged("Talk for writing", "Tilly Tagged")))
    _rewrite(extracts / "111138.csv", _set_column("outcome_measure", tagged("PUMA standardised score", "Hugo Hidden")))
    if registry:  # a pupil's name typed by two schools on every row, as the intervention, the outcome measure
        # or the round: with a registry, only registered names show
        for urn, column in (("111559", "intervention"), ("111597", "intervention"), ("111114", "outcome_measure"),
                            ("111295", "outcome_measure")):
            _rewrite(extracts / f"{urn}.csv", _set_column(column, WIDE))
        for urn in ("111571", "111163"):
            _rewrite(extracts / f"{urn}.csv", _add_column("round", WIDE))
    for urn, name in (("111375", CYRILLIC), ("111109", ARABIC), ("111112", LATIN)):
        (extracts / f"{urn}.csv").rename(extracts / f"{name} {urn}.csv")
    (extracts / f"{LATIN}.txt").write_text("notes", encoding="utf-8")
    (extracts / CYRILLIC).mkdir()
    return extracts


@pytest.mark.slow
@pytest.mark.parametrize("registry", [True, False], ids=["registry", "no-registry"])
def test_no_planted_name_in_any_published_byte_of_a_run(tmp_path, monkeypatch, registry):
    import dagster as dg

    from pipelines.definitions import defs
    from tests.helpers.pipeline import run_in_process as _run

    monkeypatch.setenv("MICROTRIALS_PUPIL_KEY", TEST_PUPIL_KEY)
    monkeypatch.delenv("MICROTRIALS_TRIALS", raising=False)
    extracts = hostile_folder(tmp_path, registry)
    out = tmp_path / "out"
    with dg.instance_for_test() as instance:
        result = _run(defs, extracts, out, tmp_path / "warehouse.duckdb", instance)
    assert result.success
    texts = published_texts(out)
    assert "load_report.csv" in texts and len(texts) > 20
    assert planted_in(texts) == []
    report = pd.read_csv(out / "load_report.csv", encoding="utf-8-sig", dtype=str, keep_default_na=False)
    assert {"file 1 from school 111375", "file 1 from school 111109", "file 1 from school 111112"} <= set(report["File"])
    assert report["Columns dropped"].str.contains("column that may hold personal data").sum() == 3
    if registry:
        by_urn = report.set_index("School URN")
        assert by_urn.loc["111559", "Trials"] == "an unregistered trial name (not shown)"
        found = publish.read_published_csv(out / "registry_report.csv", dtype=str, keep_default_na=False)
        assert "an unregistered intervention name from schools 111559, 111597" in " ".join(found["What to do"])


def test_a_name_typed_on_many_rows_of_one_pupil_is_carried_by_one_pupil():
    """Red team F3: with no registry, three schools each send one pupil with a name in the
    intervention cell on 10 rows (10 outcome measures): one pupil per school, never 10, so the name is
    not shown; ten spellings of it for one pupil are one pupil too. 10 pupils in 2 schools are."""
    import duckdb

    from microtrials.ingest import warehouse

    con = duckdb.connect()
    con.execute(warehouse.sql("schema"))
    rows = [(urn, f"pupil-{urn}", "Hermione Quartermaine", f"Test {i}") for urn in ("300001", "300002", "300003")
            for i in range(10)]
    rows += [("300001", "pupil-x", spelling, "Test") for spelling in
             ("Tom Riddle", "tom riddle", "TOM RIDDLE", "Tom  Riddle", "ＴＯＭ Riddle") * 2]
    rows += [("300002", "pupil-y", "Tom Riddle", f"Test {i}") for i in range(10)]
    rows += [(urn, f"p{urn}-{i}", "Paired reading", "Test") for urn in ("300001", "300002") for i in range(10)]
    frame = pd.DataFrame(rows, columns=["school_urn", "pupil_key", "intervention", "outcome_measure"])
    con.register("incoming", frame)
    con.execute("INSERT INTO pupils (school_urn, pupil_key, intervention, outcome_measure, arm, source_file, "
                "source_line, delivery_id) SELECT school_urn, pupil_key, intervention, outcome_measure, "
                "'control', 'f.csv', 2, 'd' FROM incoming")
    gate = publication_gate.from_warehouse(con, None)
    assert (Origin.TRIAL, "hermione quartermaine") not in gate.carried
    assert (Origin.TRIAL, "tom riddle") not in gate.carried
    assert (Origin.TRIAL, "paired reading") in gate.carried
