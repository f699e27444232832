"""The publishing asset remembers: two runs with one new school in between leave two history
entries, the page and the UI say what changed, and a run that changes nothing adds no entry."""

from __future__ import annotations

import re
import shutil
from html import unescape
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from microtrials.publish import history
from tests.conftest import SHARED, TEST_PUPIL_KEY
from tests.helpers.pipeline import run_in_process as _run

pytestmark = pytest.mark.slow  # two whole pipeline runs (the history module's own tests are quick)

# Eight reference schools that run only Reciprocal reading, then one more. Independent figures
# (microtrials.stats.trials.analyse_trial on the same pupils, checked in a scratch run and against the
# months table in microtrials.guidance): the 8 schools give g 0.289 (+4 months), the 9 give
# g 0.361 (+5 months), so the new school moves the estimate across the 0.35 boundary.
FIRST = ["111601", "111602", "111603", "111607", "111609", "111610", "111611", "111612"]
NEW = "111629"


def _publishing_metadata(result: dg.ExecuteInProcessResult) -> dict:
    events = [e for e in result.get_asset_materialization_events()
              if e.asset_key == dg.AssetKey("evidence_table")]
    return events[-1].materialization.metadata


def _page_text(path: Path) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", path.read_text(encoding="utf-8"))).split())


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    from pipelines.definitions import defs

    with pytest.MonkeyPatch.context() as patch:  # the autouse key fixture is per test; this one is per module
        patch.setenv("MICROTRIALS_PUPIL_KEY", TEST_PUPIL_KEY)
        return _two_runs(defs, tmp_path_factory.mktemp("history"))


def _two_runs(defs, root: Path):
    extracts, out, db = root / "extracts", root / "out", root / "warehouse.duckdb"
    extracts.mkdir()
    for urn in FIRST:
        shutil.copy(SHARED / "reference" / "extracts" / f"{urn}.csv", extracts)
    with dg.instance_for_test() as instance:
        first = _run(defs, extracts, out, db, instance)
        assert first.success
        first_meta = _publishing_metadata(first)
        shutil.copy(SHARED / "reference" / "extracts" / f"{NEW}.csv", extracts)
        second = _run(defs, extracts, out, db, instance)
        assert second.success
        second_meta = _publishing_metadata(second)
        third = _run(defs, extracts, out, db, instance)  # nothing new delivered
        assert third.success
        third_meta = _publishing_metadata(third)
    return out, db, first_meta, second_meta, third_meta


def test_two_runs_leave_two_history_entries_and_say_what_changed(two_runs):
    out, db, first_meta, second_meta, _ = two_runs
    con = duckdb.connect(str(db))
    try:
        kept = history.read_history(con)
    finally:
        con.close()
    assert kept["publication_id"].nunique() == 2 and len(kept) == 2
    rows = [r for _, r in kept.sort_values("published_at").iterrows()]
    assert [int(r["months_progress"]) for r in rows] == [3, 4]  # the multisite headline
    assert [int(r["schools"]) for r in rows] == [8, 9]
    assert NEW in rows[1]["school_urns"].split() and NEW not in rows[0]["school_urns"].split()

    page = _page_text(out / "reciprocal-reading--ngrt-standardised-score" / "index.html")
    assert "What changed since the last publication" in page
    sentence = re.search(r"School \d+ joined[^.]*\.\d\d[^.]*\.\d\d\)[^.]*\.", page)
    assert sentence, page[:2000]
    said = sentence.group(0)
    assert said.startswith(f"School {NEW} joined") and "moved from +3 months to +4 months" in said
    # the cumulative plot is on the page, with a text alternative that names both publications
    assert (out / "reciprocal-reading--ngrt-standardised-score" / "history.svg").is_file()
    html = (out / "reciprocal-reading--ngrt-standardised-score" / "index.html").read_text(encoding="utf-8")
    alt = re.search(r'<img src="history.svg" alt="([^"]+)"', html).group(1)
    assert "over 2 publications" in unescape(alt)
    # and the table beside it lists both, 8 then 9 schools
    table = re.search(r'<table id="history-table".*?</table>', html, re.S).group(0)
    assert re.findall(r'data-label="Schools">(\d+)<', table) == ["8", "9"]

    # the UI: the first materialization says it is the first, the second names the school
    assert "nothing since" in first_meta["what_changed"].value or "first published" in first_meta["what_changed"].value
    assert f"school {NEW} joined" in second_meta["what_changed"].value
    assert second_meta["publications_kept"].value == 2
    assert "over 2 publications" in second_meta["history"].value


def test_a_run_that_changes_nothing_adds_no_history_entry(two_runs):
    out, db, _, _, third_meta = two_runs
    con = duckdb.connect(str(db), read_only=True)
    try:
        publications = con.execute("SELECT count(DISTINCT publication_id) FROM evidence_history").fetchone()[0]
    finally:
        con.close()
    assert publications == 2
    assert third_meta["publication_id"].value.startswith("unchanged")
    assert third_meta["what_changed"].value == "nothing since the last publication"


def test_each_publication_keeps_its_disclosure_state(two_runs):
    """Every swapped-in publication's disclosure state is kept and confirmed (what the next audit
    joins), and the second publication, audited against the first, blanks pupils randomised: with the
    first's 293 randomised and 262 analysed, the joining school's pupils lost (8) would be had."""
    _, db, _, _, _ = two_runs
    con = duckdb.connect(str(db))
    try:
        states = con.execute("SELECT confirmed FROM disclosure_states ORDER BY staged_at").fetchall()
        kept = history.read_history(con).sort_values("published_at")
    finally:
        con.close()
    assert states == [(True,), (True,), (True,)]
    assert [int(v) if v == v else None for v in kept["pupils_randomised"]] == [293, None]
