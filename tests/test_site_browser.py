"""The publication in a real browser: headless Chromium via selenium, served on a loopback port.

Needs Debian's ``chromium`` and ``chromium-driver`` (``/usr/bin/chromium``, ``/usr/bin/chromedriver``);
skipped with the reason when they are absent. Screenshots go to ``$MICROTRIALS_ARTIFACTS`` when set,
else to the test's temporary folder; their paths are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import io
import math
import os
import threading
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from microtrials.publish import publish_folder
from microtrials.site import make_server, trial_slug
from tests.test_site import NASTY, SQL, small_site

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

pytestmark = pytest.mark.slow


def _skip_reason() -> str | None:
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        return ("headless Chromium not installed: apt-get install -y chromium chromium-driver "
                f"(looked for {CHROMIUM} and {CHROMEDRIVER})")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed in this environment (pip install selenium)"
    return None


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """The small publication written to a folder and served on a free loopback port."""
    site = small_site()
    out = publish_folder(tmp_path_factory.mktemp("site") / "published", site)
    server = make_server(out, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield site, out, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    reason = _skip_reason()
    if reason:
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tmp_path_factory.mktemp("chromium-profile")
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1366,1000", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {
        "download.default_directory": str(downloads),
        "download.prompt_for_download": False,
        "safebrowsing.enabled": False,
    })
    # Service pins the Debian driver, so selenium-manager never tries to download one.
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = os.environ.get("MICROTRIALS_ARTIFACTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _screenshot(driver, folder: Path, name: str) -> Path:
    """A full-page screenshot (the window resized to the page's height)."""
    height = driver.execute_script("return document.documentElement.scrollHeight") if _scripts_allowed(driver) else 2200
    driver.set_window_size(1366, min(max(int(height), 800), 4000))
    path = folder / name
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def _scripts_allowed(driver) -> bool:
    """The page's CSP forbids page scripts, but WebDriver's own scripts still run; check once."""
    try:
        driver.execute_script("return 1")
        return True
    except Exception:  # noqa: BLE001 - any WebDriver error means no
        return False


def _table_rows(driver):
    from selenium.webdriver.common.by import By

    rows = {}
    for row in driver.find_elements(By.CSS_SELECTOR, "table#evidence tbody tr"):
        header = row.find_element(By.TAG_NAME, "th")
        cells = row.find_elements(By.TAG_NAME, "td")
        rows[header.text] = cells
    return rows


def test_index_lists_every_trial_with_the_csv_numbers(browser, published, artifacts):
    from selenium.webdriver.common.by import By

    site, _, base = published
    browser.get(base)
    assert browser.title.startswith("What works for Middlesbrough")
    caption = browser.find_element(By.CSS_SELECTOR, "table#evidence caption").text
    evidence = pd.read_csv(io.BytesIO(site["evidence_table.csv"]))
    assert f"{len(evidence)} trials" in caption
    rows = _table_rows(browser)
    assert set(rows) == set(evidence["intervention"])  # the hostile name shows as text
    assert NASTY in rows
    for trial in evidence.itertuples():
        cells = rows[trial.intervention]
        assert cells[0].text == trial.outcome_measure
        shown_effect = cells[1].text.replace("\u2212", "-")
        if math.isnan(trial.effect_size):
            assert shown_effect == "not published"  # fewer than 10 pupils analysed
            continue
        assert shown_effect == f"{trial.effect_size:.2f}"
        assert float(cells[1].get_attribute("data-value")) == pytest.approx(trial.effect_size)
        low, high = cells[2].text.replace("\u2212", "-").split(" to ")
        assert (float(low), float(high)) == (round(trial.ci_low, 2), round(trial.ci_high, 2))
        months = cells[3].text.replace("\u2212", "-")
        assert int(months) == int(trial.months_progress)
        assert cells[4].text == f"{trial.evidence_strength:g} out of 5"
        assert cells[6].text.startswith(f"{trial.pupils_analysed:,} of {trial.pupils_randomised:,}")
    # no page script may run (CSP), and the injected name did not create an element
    assert not browser.find_elements(By.CSS_SELECTOR, "tbody script")
    _screenshot(browser, artifacts, "index.png")


def test_sorting_links_work_without_javascript(browser, published):
    from selenium.webdriver.common.by import By

    _, _, base = published
    browser.get(base)
    browser.find_element(By.LINK_TEXT, "Months of extra progress").click()
    assert browser.current_url.endswith("by-months.html")
    months = [c[3].get_attribute("data-value") for c in _table_rows(browser).values()]
    values = [float(v) for v in months if v]
    assert values == sorted(values, reverse=True)
    sorted_header = browser.find_element(By.CSS_SELECTOR, "th[aria-sort]")
    assert sorted_header.text.startswith("Months of extra progress")


def test_trial_page_shows_its_forest_plot(browser, published, artifacts):
    from selenium.webdriver.common.by import By

    _, _, base = published
    browser.get(base)
    browser.find_element(By.LINK_TEXT, "Reciprocal reading").click()
    slug = trial_slug("Reciprocal reading", "NGRT standardised score")
    assert browser.current_url.endswith(f"/{slug}/index.html")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Reciprocal reading"
    image = browser.find_element(By.CSS_SELECTOR, "figure img")
    assert image.get_attribute("alt").startswith("Forest plot of the effect size in 2 schools")
    deadline = time.time() + 10
    while time.time() < deadline and not browser.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", image):
        time.sleep(0.1)
    assert browser.execute_script("return arguments[0].naturalWidth", image) > 300  # the SVG rendered
    urns = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "table#schools tbody th")]
    assert urns == ["111201", "111202", "111203", "111204"]
    _screenshot(browser, artifacts, "trial.png")
    browser.find_element(By.LINK_TEXT, "All trials").click()
    assert browser.current_url.endswith("/index.html")


def test_hostile_trial_page_is_plain_text(browser, published):
    from selenium.webdriver.common.by import By

    _, _, base = published
    browser.get(base + trial_slug(NASTY, SQL) + "/index.html")
    assert browser.find_element(By.TAG_NAME, "h1").text == NASTY
    assert SQL in browser.find_element(By.CSS_SELECTOR, "p.meta").text
    assert not browser.find_elements(By.CSS_SELECTOR, "main script")


def test_download_the_evidence_table(browser, published):
    from selenium.webdriver.common.by import By

    site, _, base = published
    browser.get(base)
    link = browser.find_element(By.LINK_TEXT, "The evidence table (CSV)")
    href = link.get_attribute("href")
    assert href == base + "evidence_table.csv"
    link.click()
    target = browser.downloads / "evidence_table.csv"
    deadline = time.time() + 15
    while time.time() < deadline and not target.exists():
        time.sleep(0.2)
    if target.exists():
        data = target.read_bytes()
    else:  # some headless builds ignore download prefs; fetch the link's own href instead
        print("download did not land; fetching the link's href instead")
        with urllib.request.urlopen(href) as response:
            data = response.read()
    assert data == site["evidence_table.csv"]
    downloaded = pd.read_csv(io.BytesIO(data))
    assert len(downloaded) == 4 and "effect_size" in downloaded.columns
    assert "pupil_id" not in downloaded.columns


def test_screenshots_were_saved(artifacts):
    """The screenshots exist and are real images (a reviewer opens them from the printed paths)."""
    shots = sorted(artifacts.glob("*.png"))
    if not shots:
        pytest.skip("no screenshots taken (browser tests skipped)")
    assert all(s.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and s.stat().st_size > 10_000 for s in shots)
    print("screenshots in", artifacts, [s.name for s in shots])
