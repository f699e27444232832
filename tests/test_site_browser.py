"""The publication in a real browser (headless Chromium via selenium) on a phone, a laptop and at 200% zoom.

Needs Debian's ``chromium`` and ``chromium-driver``; skipped with the reason when they are absent.
Screenshots go to ``$MICROTRIALS_ARTIFACTS`` when set, else ``build/screenshots/`` in the repository
(git-ignored by the ``build/`` rule), and their paths are printed.
"""

from __future__ import annotations

import io
import re
import threading
from pathlib import Path

import pandas as pd
import pytest

from microtrials.publish import dictionary
from microtrials.publish.publish import publish_folder
from microtrials.publish.site import make_server
from tests.helpers.site import CAFE, small_site

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REPO = Path(__file__).resolve().parents[1]
# (name, CSS width, CSS height, device scale): 200% zoom of a 1366 x 900 laptop is a 683 x 450 CSS viewport at 2x.
SCREENS = [("phone-390", 390, 844, 3), ("phone-320", 320, 640, 2), ("laptop-1366", 1366, 900, 1),
           ("laptop-zoom-200", 683, 450, 2)]
SCIENTIFIC = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _skip_reason() -> str | None:
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        return f"headless Chromium not installed: apt-get install -y chromium chromium-driver (looked for {CHROMIUM})"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed in this environment"
    return None


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    site = small_site()
    out = publish_folder(tmp_path_factory.mktemp("site") / "published", site)
    server = make_server(out, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield site, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
                 f"--user-data-dir={tmp_path_factory.mktemp('profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def artifacts() -> Path:
    import os

    path = Path(os.environ.get("MICROTRIALS_ARTIFACTS") or REPO / "build" / "screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _emulate(driver, width, height, scale):
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": scale, "mobile": width < 500})


def _pages(site):
    return sorted(n for n in site if n.endswith(".html"))


@pytest.mark.slow
@pytest.mark.parametrize(("screen", "width", "height", "scale"), SCREENS)
def test_no_page_is_wider_than_the_screen(browser, published, artifacts, screen, width, height, scale):
    from selenium.webdriver.common.by import By

    site, base = published
    _emulate(browser, width, height, scale)
    for page in _pages(site):
        browser.get(base + page)
        scroll, viewport = browser.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert scroll <= viewport, (screen, page, scroll, viewport)
        wide = browser.execute_script(
            "const w = document.documentElement.clientWidth; return [...document.querySelectorAll('body *')]"
            ".filter(e => e.getBoundingClientRect().right > w + 0.5).map(e => e.tagName + ':' + e.textContent.slice(0, 30))")
        assert not wide, (screen, page, wide[:5])
        if page in ("index.html", "reciprocal-reading--ngrt-standardised-score/index.html", "load-report.html"):
            name = page.replace("/", "_").replace(".html", "")
            browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                "width": width, "height": min(browser.execute_script("return document.documentElement.scrollHeight"), 6000),
                "deviceScaleFactor": 1, "mobile": width < 500})
            browser.save_screenshot(str(artifacts / f"{screen}-{name}.png"))
            _emulate(browser, width, height, scale)
    # each trial's months and strength are visible (displayed, inside the screen's width)
    browser.get(base + "index.html")
    evidence = pd.read_csv(io.BytesIO(site["evidence_table.csv"]), encoding="utf-8-sig").set_index("intervention")
    for card in browser.find_elements(By.CSS_SELECTOR, "#trials > li"):
        name = card.find_element(By.CSS_SELECTOR, "h2").text
        expected = evidence.loc[name, "months_progress"]
        shown = card.find_element(By.CSS_SELECTOR, ".months").text.replace("\u2212", "-")
        if pd.isna(expected):
            assert shown in ("No result yet", "Not published"), (name, shown)
        else:
            assert shown.split()[0] == (f"{int(expected):+d}" if expected else "0"), (name, shown)
        months = card.find_element(By.CSS_SELECTOR, ".months")
        strength = card.find_element(By.CSS_SELECTOR, ".strength")
        for element in (months, strength):
            assert element.is_displayed() and element.text.strip()
            box = element.rect
            assert box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5, (screen, element.text)
    print("screenshots in", artifacts)


def test_csvs_open_as_excel_would_with_cafe_intact_and_no_scientific_notation():
    site = small_site()
    entries = set(dictionary.BY_COLUMN)
    for name, data in site.items():
        if not name.endswith(".csv"):
            continue
        # Excel reads a CSV as UTF-8 only when it starts with the byte-order mark; else as Windows-1252.
        assert data.startswith(b"\xef\xbb\xbf"), name
        text = data[3:].decode("utf-8")
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
        assert set(frame.columns) <= entries, (name, set(frame.columns) - entries)
        for value in frame.to_numpy().ravel():
            assert not SCIENTIFIC.match(value.strip()), (name, value)
    evidence = site["evidence_table.csv"][3:].decode("utf-8")
    assert CAFE in evidence and "Caf\u00c3\u00a9" not in evidence
    assert "0.0000000000000169" in evidence  # p = 1.69e-14 at full precision, positional


def test_xlsx_cells_are_never_scientific():
    from openpyxl import load_workbook

    site = small_site()
    for name, data in site.items():
        if name.endswith(".xlsx"):
            for sheet in load_workbook(io.BytesIO(data)).worksheets:
                for row in sheet.iter_rows(values_only=True):
                    for value in row:
                        assert not (isinstance(value, str) and SCIENTIFIC.match(value)), (name, value)


WORD_BREAKS = """
const out = [];
for (const cell of document.querySelectorAll('table th, table td')) {
  const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
  let node;
  while ((node = walker.nextNode())) {
    if (node.parentElement.closest('.token')) continue;  // long tokens may break anywhere
    const re = /[^\\s\\-\\u2013]+/g;  // a break at a space or hyphen is a normal line break
    let m;
    while ((m = re.exec(node.data))) {
      const range = document.createRange();
      range.setStart(node, m.index);
      range.setEnd(node, m.index + m[0].length);
      const lines = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
      if (lines.size > 1) out.push(m[0]);
    }
  }
}
return out;
"""


@pytest.mark.slow
def test_load_report_never_breaks_a_word_inside_itself_at_1366(browser, tmp_path):
    """Red-team 16: at 1366 px the load report showed "1111 / 09.c / sv" and "St/at/us"."""
    from microtrials.publish.site import build_site
    from tests.helpers.load_report import report
    from tests.helpers.site import small_evidence

    frame = report(file_name=["111109.csv", "111135_reciprocal_reading_2026-11-20_final_v2.csv", "222230.csv",
                              "111201.csv"])
    frame["columns_dropped"] = ["teacher_comments, pupil_notes, attendance_percentage", "", "", "notes"]
    out = publish_folder(tmp_path / "published", build_site(small_evidence(), {}, frame, "d", "r"))
    server = make_server(out, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _emulate(browser, 1366, 900, 1)
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/load-report.html")
        assert browser.execute_script(WORD_BREAKS) == []
        scroll, viewport = browser.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert scroll <= viewport
        # file names are never published (microtrials.publish.gate): the long name stands as "file 1 from school 111135"
        text = browser.execute_script("return document.body.innerText")
        assert "111135_reciprocal_reading" not in text and "file 1 from school 111135" in text
    finally:
        server.shutdown()
        server.server_close()


# --- issue 23: what a head teacher reads, in a real browser at 390 px and 1366 px ----------------

PAGE_SCREENS = [("phone-390", 390, 844, 3), ("laptop-1366", 1366, 900, 1)]


@pytest.fixture(scope="module")
def pages_published(tmp_path_factory):
    from tests.helpers.pages import pages_site

    site = pages_site()
    out = publish_folder(tmp_path_factory.mktemp("pages") / "published", site)
    server = make_server(out, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield site, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _visible_text(browser) -> str:
    return " ".join(browser.execute_script("return document.body.innerText").split())


@pytest.mark.slow
@pytest.mark.parametrize(("screen", "width", "height", "scale"), PAGE_SCREENS)
def test_graded_words_provisional_cards_and_no_certainty(browser, pages_published, artifacts, screen, width, height,
                                                         scale):
    from selenium.webdriver.common.by import By

    from microtrials.publish.site import SORT_VIEWS, trial_slug

    site, base = pages_published
    _emulate(browser, width, height, scale)
    for difference, words in ((0.03, "The two groups were very similar before the intervention started (a difference "
                                     "of 0.03 SD)."),
                              (0.08, "The groups differed a little before the intervention started (0.08 SD)."),
                              (0.28, "The groups differed noticeably before the intervention started (0.28 SD): "
                                     "read the result with caution.")):
        browser.get(base + trial_slug(f"Balance {difference}", "Reading age") + "/index.html")
        balance = browser.find_element(By.CSS_SELECTOR, ".summary .balance")
        assert words in " ".join(balance.text.split()) and balance.is_displayed(), (screen, difference)
        assert balance.rect["x"] + balance.rect["width"] <= width + 0.5
    for sort in SORT_VIEWS:
        browser.get(base + sort.file)
        cards = browser.find_elements(By.CSS_SELECTOR, "#trials > li")
        statuses = [c.get_attribute("data-status") for c in cards]
        interim = statuses.index("interim")
        assert interim > max(i for i, s in enumerate(statuses) if s == "published"), (screen, sort.file, statuses)
        card = " ".join(cards[interim].text.split())
        assert "Provisional" in card and "2 of 5 padlocks provisional" in card and "4 of 5" not in card
    if screen.startswith("phone"):
        browser.get(base + "index.html")
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": min(browser.execute_script("return document.documentElement.scrollHeight"), 6000),
            "deviceScaleFactor": 1, "mobile": True})
        browser.save_screenshot(str(artifacts / f"{screen}-pages-index.png"))
        _emulate(browser, width, height, scale)
    for page in _pages(site):  # a fitted model is never certain
        browser.get(base + page)
        assert "100%" not in _visible_text(browser), (screen, page)


@pytest.mark.slow
@pytest.mark.parametrize(("screen", "width", "height", "scale"), PAGE_SCREENS)
def test_history_points_and_one_intervention_page(browser, pages_published, screen, width, height, scale):
    from selenium.webdriver.common.by import By

    from microtrials.publish.site import trial_slug
    from tests.helpers.pages import READING

    site, base = pages_published
    _emulate(browser, width, height, scale)
    # unchanged across three runs: one point, no table; the trial that changed twice: three points, each with why
    browser.get(base + trial_slug("Balance 0.03", "Reading age") + "/index.html")
    assert not browser.find_elements(By.ID, "history-table")
    assert "Unchanged since it was first published on 1 November 2026" in _visible_text(browser)
    browser.get(base + trial_slug("Balance 0.08", "Reading age") + "/index.html")
    rows = browser.find_elements(By.CSS_SELECTOR, "#history-table tbody tr")
    assert len(rows) == 3 and "a school's corrected file" in rows[-1].text
    # the intervention's page links every round; each round's page links back
    main = base + trial_slug(*READING) + "/index.html"
    browser.get(main)
    links = browser.find_elements(By.CSS_SELECTOR, ".round-list a")
    assert [a.text for a in links] == ["2025 Autumn", "2026 Summer"]
    for name in ("2025 Autumn", "2026 Summer"):
        browser.get(main)
        browser.find_element(By.LINK_TEXT, name).click()
        assert browser.current_url.endswith(trial_slug(*READING, name) + "/index.html")
        assert f"({name})" in browser.find_element(By.CSS_SELECTOR, "h1").text
        browser.find_element(By.LINK_TEXT, "see all its rounds together").click()
        assert browser.current_url == main
