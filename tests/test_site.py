"""The publication: every file, strict HTML5 from templates, escaping, plain summaries, statuses, isolation."""

from __future__ import annotations

import http.client
import io
import math
import threading
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import html5lib
import pandas as pd
import pytest

from microtrials.publish import site as site_module
from microtrials.publish.publish import publish_folder
from microtrials.publish.site import SORT_VIEWS, build_site, make_server, trial_folders
from tests.helpers.site import (
    CAFE,
    NASTY,
    PUPIL_IDS,
    SQL,
    folder,
    small_evidence,
    small_load_report,
    small_schools,
    small_site,
    text_of,
)


@pytest.fixture(scope="module")
def site() -> dict[str, bytes]:
    return small_site()


def html_pages(site: dict[str, bytes]) -> dict[str, str]:
    return {name: data.decode("utf-8") for name, data in site.items() if name.endswith(".html")}


def read_csv(data: bytes, **kwargs) -> pd.DataFrame:
    assert data.startswith(b"\xef\xbb\xbf")
    return pd.read_csv(io.BytesIO(data), encoding="utf-8-sig", keep_default_na=False, na_values=[""], **kwargs)


class _Audit(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.th_without_scope = self.tables = self.captions = self.images_without_alt = self.scripts = 0
        self.links: list[str] = []
        self.html_lang = None
        self.csp = ""

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "html":
            self.html_lang = attrs.get("lang")
        if tag == "meta" and attrs.get("http-equiv") == "Content-Security-Policy":
            self.csp = attrs.get("content", "")
        if tag == "th" and attrs.get("scope") not in ("col", "row"):
            self.th_without_scope += 1
        self.tables += tag == "table"
        self.captions += tag == "caption"
        self.images_without_alt += tag == "img" and not attrs.get("alt")
        self.scripts += tag == "script"
        if tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])


def audit(text: str) -> _Audit:
    parser = _Audit()
    parser.feed(text)
    return parser


def test_every_file_of_the_publication_is_there(site):
    expected = {"evidence_table.csv", "evidence_table.xlsx", "data_dictionary.csv", "data-dictionary.html",
                "load_report.csv", "load-report.html", "send-your-results.html", "extract-format.html"}
    expected |= {v.file for v in SORT_VIEWS} | {"about-padlocks.html", "registered-plans.html"}
    for row in small_evidence().itertuples():
        f = folder(row.intervention, row.outcome_measure)
        expected |= {f"{f}/index.html", f"{f}/schools.csv", f"send/{f}-template.csv", f"send/{f}-template.xlsx"}
        if row.status != "not_estimable" and row.schools > 1:
            expected.add(f"{f}/forest.svg")
    assert set(site) == expected


def test_pages_are_strict_html5_accessible_and_script_free(site):
    parser = html5lib.HTMLParser(strict=True, namespaceHTMLElements=False)
    for name, text in html_pages(site).items():
        parser.parse(text)
        found = audit(text)
        assert found.html_lang == "en-GB" and found.scripts == 0, name
        assert "script-src 'none'" in found.csp, name
        assert found.th_without_scope == 0 and found.captions == found.tables, name
        assert found.images_without_alt == 0, name
        # the dictionary is linked from every page
        assert any(h.endswith("data_dictionary.csv") for h in found.links), name
        assert any(h.endswith("data-dictionary.html") for h in found.links), name


def test_links_are_relative_and_resolve(site):
    for name, text in html_pages(site).items():
        base = Path(name).parent
        for href in audit(text).links:
            assert "://" not in href and not href.startswith("/"), (name, href)
            target = href.split("#")[0]
            if target:
                parts = []
                for part in (base / target).as_posix().split("/"):
                    if part == "..":
                        parts.pop()
                    elif part not in (".", ""):
                        parts.append(part)
                assert "/".join(parts) in site, (name, href)


def test_pages_come_from_autoescaped_templates(site):
    assert site_module._environment().autoescape is True
    templates = Path(site_module.__file__).parent / "templates"
    assert {"base.html", "index.html", "trial.html"} <= {p.name for p in templates.glob("*.html")}
    index = site["index.html"].decode()
    assert "<script>alert" not in index and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in index
    page = site[f"{folder(NASTY, SQL)}/index.html"].decode()
    assert "<script>alert" not in page and "&#39;); DROP TABLE pupils; --" in page


def test_index_has_one_card_per_trial_with_months_strength_and_range(site):
    tree = html5lib.parse(site["index.html"].decode(), namespaceHTMLElements=False)
    cards = tree.findall(".//ul[@id='trials']/li")
    assert len(cards) == len(small_evidence())
    by_name = {"".join(c.find("h2").itertext()): " ".join(" ".join(c.itertext()).split()) for c in cards}
    assert "+3 months" in by_name["Reciprocal reading"] and "4 of 5 padlocks" in by_name["Reciprocal reading"]
    # pi -0.0503..0.5465 in months by the EEF table: -1 to +7
    assert "A new school could expect \u22121 to +7 months" in by_name["Reciprocal reading"]
    assert "not yet secure" in by_name[NASTY] and "not yet secure" not in by_name["Reciprocal reading"]
    assert "2 of 5 padlocks provisional" in by_name[CAFE]  # interim: capped and marked provisional
    assert "\u22122 months" in by_name[NASTY] and "0 of 5 padlocks" in by_name[NASTY]
    assert "No result yet" in by_name["Pilot of a new thing"]
    assert "only one school has sent results so far" in by_name["Pilot of a new thing"].lower()
    assert "Provisional: schools are still to send results" in by_name[CAFE]
    assert "Not updated in the latest run" in by_name[NASTY]
    assert "Not published" in by_name["Tiny trial"] and "+6" not in by_name["Tiny trial"]


def test_sort_views_order_the_cards(site):
    def names(page):
        tree = html5lib.parse(site[page].decode(), namespaceHTMLElements=False)
        return ["".join(c.find("h2").itertext()) for c in tree.findall(".//ul[@id='trials']/li")]
    rank = {"interim": 1, "not_estimable": 2}  # final results first, then provisional, then none yet
    assert names("by-name.html") == [r.intervention for r in sorted(
        small_evidence().itertuples(), key=lambda r: (rank.get(r.status, 0), r.intervention.casefold()))]
    months = {r.intervention: r.months_progress for r in small_evidence().itertuples() if r.status != "interim"}
    shown = [months[n] for n in names("index.html") if n in months and not math.isnan(months[n]) and n != "Tiny trial"]
    assert shown == sorted(shown, reverse=True)


def test_trial_summary_in_a_head_teachers_order_with_notes_for_evaluators(site):
    page = text_of(site[f"{folder('Reciprocal reading', 'NGRT standardised score')}/index.html"].decode())
    order = ["What it is", "Extra progress", "How secure", "What a new school could expect", "Schools and pupils",
             "For evaluators"]
    positions = [page.index(q) for q in order]
    assert positions == sorted(positions)
    summary, evaluators = page.split("For evaluators", 1)
    assert "Pupils on free school meals: +4 months" in summary
    assert "The groups differed a little before the intervention started (0.06 SD)." in summary
    assert "singular" not in summary and "lme4" not in summary.lower()  # statistics stay for evaluators
    assert "random-slope model singular" in evaluators
    assert "<0.0001" in evaluators and "e-14" not in page  # p = 1.69e-14
    assert "Only 4 schools so far." in summary


def test_registry_columns_render_when_present():
    evidence = small_evidence().iloc[:1].assign(description="Pupils read in small groups, taking turns to lead.",
                                                cost_rating=1, national_months=6, toolkit_strand="Reading comprehension")
    files = build_site(evidence, {}, small_load_report(), "d", "r")
    page = text_of(files[f"{folder('Reciprocal reading', 'NGRT standardised score')}/index.html"].decode())
    assert "Pupils read in small groups, taking turns to lead." in page
    assert "very low cost" in page
    # effect 0.25 (0.10 to 0.40) is +3 months (+2 to +5) on the EEF months table (0.19-0.26 -> 3,
    # 0.10-0.18 -> 2, 0.36-0.44 -> 5): the local figure beside the Toolkit's national one
    assert "Here: +3 months (+2 to +5); nationally (EEF Toolkit, Reading comprehension): +6 months" in page
    assert "description" in read_csv(files["evidence_table.csv"]).columns


def test_registry_cost_band_and_round_render_as_the_registry_gives_them():
    evidence = small_evidence().iloc[:1].assign(cost_rating="£££", round="2026 Autumn", national_months=-1,
                                                toolkit_strand="Setting or streaming")
    files = build_site(evidence, {}, small_load_report(), "d", "r")
    page = text_of(files[f"{folder('Reciprocal reading', 'NGRT standardised score')}/index.html"].decode())
    assert "moderate cost" in page and "(2026 Autumn)" in page
    assert "nationally (EEF Toolkit, Setting or streaming): \u22121 month" in page
    assert read_csv(files["evidence_table.csv"])["cost_rating"].tolist() == ["£££"]


def test_school_table_uses_eb_g_and_one_arm_note(site):
    f = folder("Reciprocal reading", "NGRT standardised score")
    schools = read_csv(site[f"{f}/schools.csv"], dtype={"school_urn": str}).set_index("school_urn")
    assert "eb_g" in schools.columns and "shrunken_g" not in schools.columns
    assert schools.loc["111204", "note"] == "one arm only (70 pupils in intervention)"
    assert schools.loc["111204", "n_intervention"] == 70 and schools.loc["111204", "n_control"] == 0
    page = site[f"{f}/index.html"].decode()
    assert "one arm only (70 pupils in intervention)" in page and ">none<" not in page


def test_not_estimable_row_is_blank_with_reason_first(site):
    evidence = read_csv(site["evidence_table.csv"])
    pilot = evidence[evidence["intervention"] == "Pilot of a new thing"].iloc[0]
    assert pilot["status"] == "not_estimable" and math.isnan(pilot["effect_size"])
    assert pilot["notes"].startswith("only one school has sent results so far")
    assert pd.isna(pilot["suppressed"])  # nothing to suppress: blank because not estimable


def test_collision_gets_a_hash_and_a_true_message():
    folders, messages = trial_folders([("Maths: mastery", "PUMA"), ("Maths mastery", "PUMA"), ("Other", "PUMA")])
    assert folders[0] != folders[1] and folders[0].startswith("maths-mastery--puma-") and folders[2] == "other--puma"
    assert "punctuation" in messages[0] and "capitals" not in messages[0]
    long_a, long_b = "x" * 50 + " one", "x" * 50 + " two"
    assert len(set(trial_folders([(long_a, "m"), (long_b, "m")])[0])) == 2
    folders, messages = trial_folders([("Reading Boost", "m"), ("reading boost", "m")])
    assert len(set(folders)) == 2 and "differ only in capitals" in messages[0]


def test_colliding_trials_both_publish():
    evidence = small_evidence().iloc[:2].copy()
    evidence.loc[1, ["intervention", "outcome_measure"]] = ["Reciprocal reading!", "NGRT standardised score"]
    problems = []
    files = build_site(evidence, {}, small_load_report(), "d", "r", problems=problems)
    pages = [n for n in files if n.startswith("reciprocal-reading--ngrt-standardised-score-") and n.endswith("index.html")]
    assert len(pages) == 2 and len(problems) == 1


def test_one_failing_trial_costs_the_others_nothing(monkeypatch):
    real = site_module.forest_plot

    def fragile(per_school, pooled, title, prediction=None):
        if title.startswith(NASTY):
            raise ValueError("plot broke")
        return real(per_school, pooled, title, prediction)

    monkeypatch.setattr(site_module, "forest_plot", fragile)
    files = small_site()
    nasty = folder(NASTY, SQL)
    assert f"{nasty}/forest.svg" not in files and "could not be drawn" in files[f"{nasty}/index.html"].decode()
    assert f"{folder('Reciprocal reading', 'NGRT standardised score')}/forest.svg" in files

    def broken_view(row, f):
        if row["intervention"] == CAFE:
            raise RuntimeError("page broke")
        return real_view(row, f)

    real_view = site_module.views.trial_view
    monkeypatch.setattr(site_module.views, "trial_view", broken_view)
    problems = []
    files = small_site(problems)
    cafe = folder(CAFE, "Café test")
    assert "could not be built" in files[f"{cafe}/index.html"].decode() and len(problems) == 1
    assert "+3 months" in files[f"{folder('Reciprocal reading', 'NGRT standardised score')}/index.html"].decode()
    assert "Its page could not be built" in files["index.html"].decode()


def test_math_text_in_a_name_does_not_break_the_plot():
    evidence = small_evidence().iloc[:1].assign(intervention="Costs $5$ per pupil $\\frac{1}{0}$")
    key = ("Costs $5$ per pupil $\\frac{1}{0}$", "NGRT standardised score")
    problems = []
    files = build_site(evidence, {key: small_schools()[("Reciprocal reading", "NGRT standardised score")]},
                       small_load_report(), "d", "r", problems=problems)
    assert not problems
    assert any(n.endswith("forest.svg") for n in files)


def test_load_report_puts_problems_first_and_hides_revealing_names(site):
    report = read_csv(site["load_report.csv"], dtype=str)
    assert list(report.columns[:4]) == ["File", "School URN", "Status", "What went wrong"]
    assert report["Status"].tolist()[:2] == ["rejected: nothing loaded", "partly loaded: some rows set aside"]
    assert report["File"].tolist()[:2] == ["file 1 with no school URN", "file 1 from school 111202"]
    assert "rows set aside (arm not understood)" in report["What went wrong"].iloc[1]
    # no file name is ever shown (the publication gate), however harmless it looks
    assert not [f for f in report["File"] if ".csv" in f]
    for name, data in site.items():
        assert b"Smith" not in data, name
        for pupil in PUPIL_IDS:
            assert pupil.encode() not in data, (name, pupil)


def test_send_page_and_templates(site):
    from openpyxl import load_workbook

    page = text_of(site["send-your-results.html"].decode())
    assert "What happens after you send it" in page and "Excel template" in page
    f = folder(CAFE, "Café test")
    header = read_csv(site[f"send/{f}-template.csv"]).columns.tolist()
    assert header[:6] == ["school_urn", "pupil_id", "intervention", "outcome_measure", "arm", "outcome"]
    book = load_workbook(io.BytesIO(site[f"send/{f}-template.xlsx"]))
    sheet = book["Pupils"]
    rules = {str(v.sqref).split(":")[0][0]: v for v in sheet.data_validations.dataValidation}
    lists = book["Lists"]
    def allowed(letter):
        ref = rules[letter].formula1.split("!")[1].replace("$", "")
        return [c.value for row in lists[ref] for c in row]
    columns = [c.value for c in sheet[1]]
    letter = {name: chr(ord("A") + i) for i, name in enumerate(columns)}
    assert allowed(letter["arm"]) == ["intervention", "control"]
    assert allowed(letter["fsm"]) == ["Y", "N"]
    assert allowed(letter["intervention"]) == [CAFE]
    # the published format page lists every column of docs/extract-format.md's extract table
    doc = (Path(__file__).resolve().parents[1] / "docs" / "extract-format.md").read_text()
    section = doc.split("## 1.", 1)[1].split("## 2.", 1)[0]
    documented = [line.split("|")[1].strip() for line in section.splitlines()
                  if line.startswith("| ") and not line.startswith("| column") and "---" not in line]
    format_page = text_of(site["extract-format.html"].decode())
    assert documented and all(c in format_page for c in documented)


def test_evidence_xlsx_is_readable(site):
    from openpyxl import load_workbook

    book = load_workbook(io.BytesIO(site["evidence_table.xlsx"]))
    sheet = book["Evidence table"]
    headers = [c.value for c in sheet[1]]
    assert "Effect size" in headers and "effect_size" not in headers
    assert sheet.freeze_panes == "A2" and sheet["A1"].font.bold
    assert sheet.column_dimensions["A"].width >= 10
    p = headers.index("p-value")
    cells = [row[p] for row in sheet.iter_rows(min_row=2)]
    assert [c.value for c in cells if c.value is not None] == [0.0009, 0.263, 1.69e-14, 0.0009]
    assert {c.number_format for c in cells if c.value is not None} == {'[<0.0001]"<0.0001";0.0000'}


def test_xlsx_headers_are_dictionary_labels(site):
    from openpyxl import load_workbook

    from microtrials.publish import dictionary

    labels = {e.label for e in dictionary.ENTRIES}
    headers = [c.value for c in load_workbook(io.BytesIO(site["evidence_table.xlsx"]))["Evidence table"][1]]
    assert headers and set(headers) <= labels


def test_build_is_deterministic():
    assert small_site() == small_site()


def test_server_serves_the_published_folder(tmp_path, site):
    out = publish_folder(tmp_path / "published", site)
    server = make_server(out, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        with urllib.request.urlopen(base) as response:
            assert response.headers["Content-Type"] == "text/html; charset=utf-8"
            assert response.read() == site["index.html"]
        with urllib.request.urlopen(base + "evidence_table.csv") as response:
            assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
            assert response.read() == site["evidence_table.csv"]
        (out / "no-index").mkdir()
        with pytest.raises(urllib.error.HTTPError) as listing:  # no directory listings
            urllib.request.urlopen(base + "no-index/")
        assert listing.value.code == 404
        connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1])
        connection.request("GET", "/../../../../etc/passwd")  # cannot leave the folder
        assert connection.getresponse().status == 404
        connection.close()
    finally:
        server.shutdown()
        server.server_close()


def test_forest_plot_png_and_svg_edge_cases():
    from microtrials.publish.plots import forest_plot, forest_plot_png

    schools = small_schools()[("Reciprocal reading", "NGRT standardised score")]
    png = forest_plot_png(schools, (0.25, 0.1, 0.4), "Reciprocal reading", (-0.05, 0.55))
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5_000
    svg = forest_plot(schools, (0.25, 0.1, 0.4), "Reciprocal reading")
    assert svg == forest_plot(schools, (0.25, 0.1, 0.4), "Reciprocal reading")  # deterministic
    html5lib.parse(svg.decode())  # well-formed enough to embed
    empty = forest_plot(schools.iloc[:0], (math.nan, math.nan, math.nan), "No schools yet")
    assert b"<svg" in empty and b"Forest plot of the effect size in 0 schools" in empty


def test_server_reports_a_busy_port(tmp_path):
    from microtrials.errors import MicrotrialsError

    first = make_server(tmp_path, 0)
    try:
        with pytest.raises(MicrotrialsError, match="choose another --port"):
            make_server(tmp_path, first.server_address[1])
    finally:
        first.server_close()
    with pytest.raises(MicrotrialsError, match="not a folder"):
        make_server(tmp_path / "missing", 0)


def test_rounds_without_results_show_what_they_could_detect():
    plans = [{"intervention": "reciprocal  READING", "round": "2026 Autumn", "outcome_measure": "NGRT standardised score",
              "text": "8 schools of about 60 pupils could detect an effect of 0.21 SD (about +3 months) or more."}]
    files = build_site(small_evidence(), {}, small_load_report(), "d", "r", plans=plans)
    send = text_of(files["send-your-results.html"].decode())
    assert "Rounds planned, no results yet" in send
    assert "reciprocal READING (2026 Autumn) : 8 schools of about 60 pupils could detect" in send  # text_of spaces tags
    page = text_of(files[f"{folder('Reciprocal reading', 'NGRT standardised score')}/index.html"].decode())
    assert "Next round 2026 Autumn (no results yet): 8 schools of about 60 pupils" in page
    other = text_of(files[f"{folder('Tiny trial', 'Writing assessment')}/index.html"].decode())
    assert "Next round" not in other


def test_history_section_only_with_a_history():
    from datetime import datetime

    from microtrials.publish import history

    evidence = small_evidence()
    plain = build_site(evidence, {}, small_load_report(), "d", "r")
    page = plain[f"{folder('Reciprocal reading', 'NGRT standardised score')}/index.html"].decode()
    assert "How the estimate has moved" not in page
    first = history.publication_frame(site_module.published_table(evidence), datetime(2026, 10, 1, 9))
    files = build_site(evidence, {}, small_load_report(), "d", "r", history=first)
    page = text_of(files[f"{folder('Reciprocal reading', 'NGRT standardised score')}/index.html"].decode())
    assert "This is the first publication of this result" in page
    assert f"{folder('Reciprocal reading', 'NGRT standardised score')}/history.svg" not in files


def test_rounds_of_one_intervention_get_pages_of_their_own():
    base = small_evidence().iloc[:1]
    evidence = pd.concat([base.assign(round="2025 Autumn"), base.assign(round="2026 Summer", effect_size=0.1),
                          base.assign(round="all rounds")], ignore_index=True)
    schools = {("Reciprocal reading", "NGRT standardised score", "2025 Autumn"): pd.DataFrame(
                   {"school_urn": ["111001", "111002"], "n_intervention": [20, 21], "n_control": [20, 19],
                    "g": [0.2, 0.3], "ci_low": [0.0, 0.1], "ci_high": [0.4, 0.5], "eb_g": [0.2, 0.3], "note": ["", ""]}),
               ("Reciprocal reading", "NGRT standardised score", "2026 Summer"): pd.DataFrame(
                   {"school_urn": ["111003", "111004"], "n_intervention": [20, 21], "n_control": [20, 19],
                    "g": [0.2, 0.3], "ci_low": [0.0, 0.1], "ci_high": [0.4, 0.5], "eb_g": [0.2, 0.3], "note": ["", ""]})}
    problems = []
    files = build_site(evidence, schools, small_load_report(), "d", "r", problems=problems)
    main = folder("Reciprocal reading", "NGRT standardised score")
    assert not problems
    # the cumulative row keeps the intervention's page; each round gets its own folder
    assert {f"{main}/index.html", f"{main}--2025-autumn/index.html", f"{main}--2026-summer/index.html"} <= set(files)
    autumn = files[f"{main}--2025-autumn/schools.csv"].decode("utf-8-sig")
    summer = files[f"{main}--2026-summer/schools.csv"].decode("utf-8-sig")
    assert "111001" in autumn and "111003" not in autumn and "111003" in summer
    assert "(2026 Summer)" in text_of(files[f"{main}--2026-summer/index.html"].decode())
    # schools send one file per trial, whichever round: one template, named for the trial
    assert [f for f in files if f.startswith(f"send/{main}")] == [f"send/{main}-template.csv", f"send/{main}-template.xlsx"]
