"""The publication: every file, valid accessible HTML5, escaping, sorting, suppression, no pupil ids."""

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
import numpy as np
import pandas as pd
import pytest

from microtrials.publish import publish_folder
from microtrials.site import SORT_VIEWS, build_site, make_server, trial_slug

NASTY = "<script>alert('x')</script>"
SQL = "'); DROP TABLE pupils; --"
PUPIL_IDS = ["P1111000001", "P1111000002", "SECRET-PUPIL-7"]


def small_evidence() -> pd.DataFrame:
    """Four trials in the contract's columns, with awkward names and blanks."""
    rows = [
        dict(intervention="Reciprocal reading", outcome_measure="NGRT standardised score", schools=4,
             schools_both_arms=3, pupils_randomised=260, pupils_analysed=241, attrition_pct=7.3,
             effect_size=0.2481, ci_low=0.1012, ci_high=0.3950, p_value=0.0009, months_progress=3,
             tau=0.0812, i2=21.5, pi_low=-0.0503, pi_high=0.5465, fsm_effect_size=0.31, fsm_ci_low=0.02,
             fsm_ci_high=0.60, evidence_strength=4, notes="1 school had only one arm"),
        dict(intervention="Maths mastery", outcome_measure="PUMA standardised score", schools=3,
             schools_both_arms=3, pupils_randomised=150, pupils_analysed=140, attrition_pct=6.7,
             effect_size=0.0934, ci_low=-0.0701, ci_high=0.2569, p_value=0.263, months_progress=1,
             tau=0.0, i2=0.0, pi_low=-0.0801, pi_high=0.2669, fsm_effect_size=np.nan, fsm_ci_low=np.nan,
             fsm_ci_high=np.nan, evidence_strength=2, notes="FSM effect not estimated: too few pupils"),
        dict(intervention=NASTY, outcome_measure=SQL, schools=2, schools_both_arms=2,
             pupils_randomised=90, pupils_analysed=84, attrition_pct=6.7, effect_size=-0.1203,
             ci_low=-0.4102, ci_high=0.1696, p_value=0.41, months_progress=-2, tau=np.nan, i2=np.nan,
             pi_low=np.nan, pi_high=np.nan, fsm_effect_size=np.nan, fsm_ci_low=np.nan, fsm_ci_high=np.nan,
             evidence_strength=0, notes="=HYPERLINK(\"http://evil\")"),
        dict(intervention="Tiny trial", outcome_measure="Writing assessment", schools=1,
             schools_both_arms=1, pupils_randomised=9, pupils_analysed=8, attrition_pct=11.1,
             effect_size=0.5, ci_low=-0.9, ci_high=1.9, p_value=0.5, months_progress=6, tau=np.nan,
             i2=np.nan, pi_low=np.nan, pi_high=np.nan, fsm_effect_size=np.nan, fsm_ci_low=np.nan,
             fsm_ci_high=np.nan, evidence_strength=0, notes=""),
    ]
    return pd.DataFrame(rows)


def small_schools() -> dict[str, pd.DataFrame]:
    """Per-school figures for three of the trials (one suppressed school, one one-arm school)."""
    def frame(urns, n_int, n_con, g, se):
        g, se = np.asarray(g, dtype=float), np.asarray(se, dtype=float)
        return pd.DataFrame({"school_urn": urns, "n_intervention": n_int, "n_control": n_con, "g": g,
                             "var": se**2,  # an extra figure: suppressed with the others
                             "ci_low": g - 1.96 * se, "ci_high": g + 1.96 * se, "shrunken_g": 0.5 * g + 0.1})
    return {
        trial_slug("Reciprocal reading", "NGRT standardised score"): frame(
            ["111201", "111202", "111203", "111204"], [40, 35, 30, 60], [38, 7, 31, 0],
            [0.31, 0.6, 0.18, np.nan], [0.22, 0.4, 0.25, np.nan]),
        trial_slug("Maths mastery", "PUMA standardised score"): frame(
            ["111301", "111302", "111303"], [25, 24, 22], [24, 23, 22], [0.05, 0.15, 0.08], [0.28, 0.29, 0.3]),
        trial_slug(NASTY, SQL): frame(["111401", "111402"], [22, 20], [21, 21], [-0.2, -0.03], [0.3, 0.31]),
    }


def small_load_report() -> pd.DataFrame:
    return pd.DataFrame({
        "file_name": ["111201.csv", "111202.csv", "111999.csv"],
        "status": ["loaded", "loaded", "rejected"],
        "rows_loaded": [78, 42, 0],
        "pupil_id": PUPIL_IDS,  # must never be published
        "reason": ["", "column 'name' dropped", "@SUM(1+1) not a header"],
    })


def small_site() -> dict[str, bytes]:
    return build_site(small_evidence(), small_schools(), small_load_report(), "20 November 2026", "23 November 2026")


@pytest.fixture(scope="module")
def site() -> dict[str, bytes]:
    return small_site()


def html_pages(site: dict[str, bytes]) -> dict[str, str]:
    return {name: data.decode("utf-8") for name, data in site.items() if name.endswith(".html")}


class _Audit(HTMLParser):
    """Collects what the accessibility checks need from a page."""

    def __init__(self) -> None:
        super().__init__()
        self.th_without_scope = 0
        self.tables = 0
        self.captions = 0
        self.images_without_alt = 0
        self.svgs_without_title = 0
        self.links: list[str] = []
        self.scripts = 0
        self.html_lang = None
        self.charset = False
        self.title = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "html":
            self.html_lang = attrs.get("lang")
        if tag == "meta" and attrs.get("charset", "").lower() == "utf-8":
            self.charset = True
        if tag == "title":
            self.title = True
        if tag == "th" and attrs.get("scope") not in ("col", "row", "colgroup", "rowgroup"):
            self.th_without_scope += 1
        if tag == "table":
            self.tables += 1
        if tag == "caption":
            self.captions += 1
        if tag == "img" and not attrs.get("alt"):
            self.images_without_alt += 1
        if tag == "svg" and not (attrs.get("role") == "img" and (attrs.get("aria-label") or attrs.get("aria-labelledby"))):
            self.svgs_without_title += 1
        if tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])
        if tag == "script":
            self.scripts += 1


def audit(text: str) -> _Audit:
    parser = _Audit()
    parser.feed(text)
    return parser


def test_every_file_of_the_publication_is_there(site):
    slugs = [trial_slug(r.intervention, r.outcome_measure) for r in small_evidence().itertuples()]
    expected = {"evidence_table.csv", "load_report.csv", "load-report.html"} | {v.file for v in SORT_VIEWS}
    for slug in slugs:
        expected |= {f"{slug}/index.html", f"{slug}/schools.csv", f"{slug}/forest.svg"}
    assert set(site) == expected


def test_trial_slug_is_safe_and_stable():
    assert trial_slug("Reciprocal reading", "NGRT standardised score") == "reciprocal-reading--ngrt-standardised-score"
    assert trial_slug("Tutoring in Year 7 maths", "GL Progress Test in Maths") == \
        "tutoring-in-year-7-maths--gl-progress-test-in-maths"
    assert trial_slug("Café (ÉLAN)", "") == "cafe-elan--trial"
    slug = trial_slug(NASTY, SQL)
    assert slug == "script-alert-x-script--drop-table-pupils"
    assert all(c.isalnum() and c.islower() or c.isdigit() or c == "-" for c in slug)
    assert len(trial_slug("x" * 500, "y" * 500)) <= 102


def test_pages_are_strict_html5(site):
    parser = html5lib.HTMLParser(strict=True, namespaceHTMLElements=False)
    for name, text in html_pages(site).items():
        parser.parse(text)  # raises html5lib.html5parser.ParseError on any parse error
        assert text.startswith("<!DOCTYPE html>"), name


def test_pages_are_accessible(site):
    for name, text in html_pages(site).items():
        found = audit(text)
        assert found.html_lang == "en-GB", name
        assert found.charset and found.title, name
        assert found.th_without_scope == 0, name
        assert found.tables >= 1 and found.captions == found.tables, name
        assert found.images_without_alt == 0 and found.svgs_without_title == 0, name
        assert found.scripts == 0, name


def test_forest_plots_are_labelled_svg(site):
    for name, data in site.items():
        if name.endswith(".svg"):
            text = data.decode("utf-8")
            assert 'role="img"' in text and "<title id=\"forest-title\">" in text and "<desc" in text
            assert "<script" not in text.lower()


def test_links_are_relative_and_resolve(site):
    for name, text in html_pages(site).items():
        folder = Path(name).parent
        for href in audit(text).links:
            assert "://" not in href and not href.startswith("/"), (name, href)
            target = href.split("#")[0]
            if target:
                resolved = (folder / target).as_posix()
                parts = []
                for part in resolved.split("/"):
                    if part == "..":
                        parts.pop()
                    elif part not in (".", ""):
                        parts.append(part)
                assert "/".join(parts) in site, (name, href)


def test_hostile_names_appear_as_text(site):
    index = site["index.html"].decode("utf-8")
    assert "<script>" not in index
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in index
    assert "&#x27;); DROP TABLE pupils; --" in index
    page = site[f"{trial_slug(NASTY, SQL)}/index.html"].decode("utf-8")
    assert "<script>" not in page and "&lt;script&gt;" in page
    tree = html5lib.parse(index, namespaceHTMLElements=False)
    assert not tree.findall(".//script")
    row_headers = ["".join(th.itertext()) for th in tree.findall(".//tbody/tr/th")]
    assert NASTY in row_headers


def test_csvs_neutralise_formulas_and_hold_no_pupil_id(site):
    evidence = pd.read_csv(io.BytesIO(site["evidence_table.csv"]))
    assert evidence.loc[evidence["intervention"] == NASTY, "notes"].item() == "'=HYPERLINK(\"http://evil\")"
    report = pd.read_csv(io.BytesIO(site["load_report.csv"]))
    assert "pupil_id" not in report.columns
    assert report["reason"].iloc[2] == "'@SUM(1+1) not a header"
    for name, data in site.items():
        for pupil in PUPIL_IDS:
            assert pupil.encode() not in data, (name, pupil)


def test_evidence_csv_keeps_contract_order_and_values(site):
    evidence = pd.read_csv(io.BytesIO(site["evidence_table.csv"]))
    source = small_evidence()
    assert list(evidence.columns[: len(source.columns)]) == list(source.columns)
    assert list(evidence["intervention"]) == sorted(source["intervention"])  # "<" sorts first
    merged = evidence.merge(source, on="intervention", suffixes=("", "_in"))
    kept = merged[merged["pupils_analysed"] >= 10]
    assert np.allclose(kept["effect_size"], kept["effect_size_in"])
    assert np.allclose(kept["months_progress"], kept["months_progress_in"])


def test_small_trial_and_small_schools_are_suppressed(site):
    evidence = pd.read_csv(io.BytesIO(site["evidence_table.csv"]), keep_default_na=False, na_values=[""])
    tiny = evidence[evidence["intervention"] == "Tiny trial"].iloc[0]
    assert math.isnan(tiny["effect_size"]) and math.isnan(tiny["months_progress"])
    assert tiny["suppressed"] == "fewer than 10 pupils (pupils_analysed)"
    assert tiny["pupils_analysed"] == 8 and tiny["schools"] == 1
    assert site["evidence_table.csv"].splitlines()[1].split(b",")[11] in (b"3", b"1", b"-2")  # months stay whole
    slug = trial_slug("Reciprocal reading", "NGRT standardised score")
    schools = pd.read_csv(io.BytesIO(site[f"{slug}/schools.csv"]), dtype={"school_urn": str})
    by_urn = schools.set_index("school_urn")
    assert math.isnan(by_urn.loc["111202", "g"]) and math.isnan(by_urn.loc["111202", "ci_low"])
    assert math.isnan(by_urn.loc["111202", "var"]) and math.isnan(by_urn.loc["111202", "shrunken_g"])
    # a small group's counts are figures too: blanked, and the reason does not give them away
    assert pd.isna(by_urn.loc["111202", "n_control"]) and pd.isna(by_urn.loc["111202", "n_intervention"])
    assert by_urn.loc["111202", "suppressed"] == "fewer than 10 pupils (n_control)"
    assert by_urn.loc["111201", "g"] == pytest.approx(0.31)
    assert pd.isna(by_urn.loc["111201", "suppressed"])
    assert by_urn.loc["111204", "suppressed"] == "fewer than 10 pupils (n_control)"
    page = site[f"{slug}/index.html"].decode("utf-8")
    assert "Not published: fewer than 10 pupils (n_control)" in page
    assert "(n_control = 7)" not in page


def _effect_column(text: str) -> list[str]:
    tree = html5lib.parse(text, namespaceHTMLElements=False)
    return [row.findall("td")[1].get("data-value") for row in tree.findall(".//table[@id='evidence']/tbody/tr")]


def test_sorted_views_without_javascript(site):
    source = small_evidence()
    by_effect = _effect_column(site["index.html"].decode())
    effects = [float(v) if v else math.nan for v in by_effect]
    shown = [v for v in effects if not math.isnan(v)]
    assert shown == sorted(shown, reverse=True) and math.isnan(effects[-1])  # suppressed trial last
    tree = html5lib.parse(site["by-name.html"].decode(), namespaceHTMLElements=False)
    names = ["".join(th.itertext()) for th in tree.findall(".//tbody/tr/th")]
    assert names == sorted(source["intervention"], key=str.casefold)
    tree = html5lib.parse(site["by-strength.html"].decode(), namespaceHTMLElements=False)
    strengths = [row.findall("td")[4].get("data-value") for row in tree.findall(".//tbody/tr")]
    values = [float(v) for v in strengths if v]
    assert values == sorted(values, reverse=True)
    index = site["index.html"].decode()
    assert 'aria-sort="descending"' in index
    assert 'href="by-months.html"' in index and 'href="by-strength.html"' in index


def test_page_states_dates_and_explains(site):
    index = site["index.html"].decode()
    assert "20 November 2026" in index and "23 November 2026" in index
    for phrase in ("How to read this", "Effect size", "Months of extra progress", "prediction interval",
                   "Evidence strength"):
        assert phrase in index


def test_numbers_on_the_page_match_the_csv(site):
    evidence = pd.read_csv(io.BytesIO(site["evidence_table.csv"]))
    tree = html5lib.parse(site["index.html"].decode(), namespaceHTMLElements=False)
    rows = {"".join(r.find("th").itertext()): r.findall("td") for r in tree.findall(".//tbody/tr")}
    for row in evidence.itertuples():
        cells = rows[row.intervention]
        if not math.isnan(row.effect_size):
            assert cells[1].text == f"{row.effect_size:.2f}".replace("-", "\u2212")
            assert float(cells[1].get("data-value")) == pytest.approx(row.effect_size)
            assert float(cells[3].get("data-value")) == pytest.approx(row.months_progress)


def test_duplicate_slugs_are_refused():
    from microtrials.errors import MicrotrialsError

    evidence = small_evidence().iloc[:2].copy()
    evidence.loc[1, ["intervention", "outcome_measure"]] = ["Reciprocal Reading!", "NGRT standardised score"]
    with pytest.raises(MicrotrialsError, match="share the page name"):
        build_site(evidence, {}, small_load_report(), "d", "r")


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
    from microtrials.plots import forest_plot, forest_plot_png

    schools = small_schools()[trial_slug("Reciprocal reading", "NGRT standardised score")]
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
