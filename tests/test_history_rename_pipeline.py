"""The whole pipeline, twice: between the runs the officer renames the trial in trials.csv, keeping
the old name as an alias, and one school re-sends its file with 5 more pupils. The trial keeps its
history under the new name, "what changed" says it was renamed, and the 5 pupils cannot be read off."""

from __future__ import annotations

import csv
import io
import re
import shutil
from html import unescape
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest

from microtrials.ingest.registry import read_registry
from microtrials.publish import history, site
from tests.conftest import SHARED, TEST_PUPIL_KEY
from tests.helpers.pipeline import run_in_process as _run

pytestmark = pytest.mark.slow  # two whole pipeline runs

SCHOOLS = ["111601", "111602", "111603", "111607", "111609", "111610", "111611", "111612"]
OLD, NEW, OUTCOME = "Reciprocal reading", "Reading together", "NGRT standardised score"
GROWN = "111602"  # re-sent with 5 more pupils in the intervention arm


def _trials(name: str, aliases: str = "") -> str:
    return ("intervention,outcome_measure,start_date,end_date,schools,aliases\n"
            f"{name},{OUTCOME},2025-09-01,2026-07-17,{' '.join(SCHOOLS)},{aliases}\n")


def _five_more(path: Path) -> None:
    """The school's file with 5 more intervention pupils (copies of its first intervention row, new IDs)."""
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    first = next(r for r in rows if r["arm"] == "intervention")
    rows += [{**first, "pupil_id": f"P{GROWN}9{i:03d}"} for i in range(5)]
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), quoting=csv.QUOTE_NONNUMERIC)
        writer.writeheader()
        writer.writerows(rows)


def _metadata(result: dg.ExecuteInProcessResult) -> dict:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey("evidence_table")]
    return events[-1].materialization.metadata


def _counts(out: Path, name: str) -> dict[str, str]:
    folder = out / site.trial_slug(name, OUTCOME)
    evidence = pd.read_csv(out / "evidence_table.csv", encoding="utf-8-sig", dtype=str, keep_default_na=False)
    schools = pd.read_csv(folder / "schools.csv", encoding="utf-8-sig", dtype=str, keep_default_na=False)
    school = schools[schools["school_urn"] == GROWN].iloc[0]
    return {"pupils_analysed": evidence.loc[0, "pupils_analysed"],
            "pupils_randomised": evidence.loc[0, "pupils_randomised"], "n_intervention": school["n_intervention"]}


@pytest.fixture(scope="module")
def renamed(tmp_path_factory):
    from pipelines.definitions import defs

    root = tmp_path_factory.mktemp("rename")
    extracts, out, db = root / "extracts", root / "out", root / "warehouse.duckdb"
    extracts.mkdir()
    for urn in SCHOOLS:
        shutil.copy(SHARED / "reference" / "extracts" / f"{urn}.csv", extracts)
    (root / "trials.csv").write_text(_trials(OLD), encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch, dg.instance_for_test() as instance:
        patch.setenv("MICROTRIALS_PUPIL_KEY", TEST_PUPIL_KEY)
        first = _run(defs, extracts, out, db, instance)
        assert first.success
        before = _counts(out, OLD)
        (root / "trials.csv").write_text(_trials(NEW, OLD), encoding="utf-8")
        _five_more(extracts / f"{GROWN}.csv")
        second = _run(defs, extracts, out, db, instance)
        assert second.success
    return out, db, before, _counts(out, NEW), _metadata(second)


def test_the_renamed_trial_keeps_its_history_and_says_it_was_renamed(renamed):
    out, db, _, _, meta = renamed
    con = duckdb.connect(str(db))
    try:
        kept = history.read_history(con)
    finally:
        con.close()
    assert list(kept.sort_values("published_at")["intervention"]) == [OLD, NEW]  # stored as published
    found = history.trial_history(history.as_registered(kept, read_registry(_trials(NEW, OLD).encode())),
                                  NEW, OUTCOME, None)
    assert len(found.rows) == 2 and found.rows["reason"].iloc[-1].startswith(f'renamed from "{OLD}" in the registry')
    page = " ".join(unescape(re.sub(r"<[^>]+>", " ", (out / site.trial_slug(NEW, OUTCOME) / "index.html")
                                    .read_text(encoding="utf-8"))).split())
    changed = page.split("What changed since the last publication")[1].split("The estimate (dot)")[0]
    assert changed.strip().startswith(f'Renamed from "{OLD}" in the registry')
    assert "first published" not in changed
    said = meta["what_changed"].value
    assert f'{NEW} ({OUTCOME}): renamed from "{OLD}" in the registry' in said
    assert "no longer in the evidence table" not in said and "first published" not in said
    assert meta["publications_kept"].value == 2


def test_five_more_pupils_cannot_be_read_off_across_the_rename(renamed):
    _, _, before, after, _ = renamed
    assert before["n_intervention"] != ""  # the school's count was published the first time
    for cell, value in after.items():  # every count is the same, 10 or more apart, or not published
        assert value == "" or before[cell] == "" or abs(int(value) - int(before[cell])) in (0, *range(10, 10 ** 6)), \
            (cell, before[cell], value)
    assert after["n_intervention"] == ""  # 5 more than the published count: blanked
