"""A trial renamed in the registry with its old name kept as an alias stays one trial across
publications: its history continues under the new name, "what changed" says it was renamed, and
disclosure control still compares its counts with the last publication. Two publications through the
publishing path (real DuckDB history, the previous folder read back, the site built and swapped in)."""

from __future__ import annotations

import io
import re
from datetime import datetime
from html import unescape
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from microtrials.ingest.registry import read_registry
from microtrials.publish import history, publish, site

OLD, NEW, OUTCOME, ROUND = "Paired reading", "Reading partners", "Test score", "2025-26"
HEADER = "intervention,outcome_measure,round,start_date,end_date,schools,aliases\n"
URNS = [f"2222{i:02d}" for i in range(1, 8)]
# school -> (analysed in intervention, analysed in control); the second publication: one school's
# file re-sent with 5 more pupils in the intervention arm (a change a reader must not get back).
FIRST = {urn: (20 + 3 * i, 21 + 2 * i) for i, urn in enumerate(URNS)}
LATER = {**FIRST, URNS[2]: (FIRST[URNS[2]][0] + 5, FIRST[URNS[2]][1])}
WHEN = (datetime(2026, 10, 1, 9), datetime(2026, 11, 2, 9))


def registry(name: str, aliases: str = ""):
    return read_registry((HEADER + f"{name},{OUTCOME},{ROUND},2025-09-01,2026-07-17,{' '.join(URNS)},{aliases}\n")
                         .encode())


def _evidence(name: str, schools: dict) -> tuple[pd.DataFrame, dict]:
    analysed = sum(a + c for a, c in schools.values())
    row = dict(intervention=name, outcome_measure=OUTCOME, round=ROUND, outcome_role="primary",
               schools=len(schools), schools_both_arms=len(schools), pupils_randomised=analysed + 12,
               pupils_analysed=analysed, attrition_pct=round(1200 / (analysed + 12), 1), effect_size=0.21,
               ci_low=0.05, ci_high=0.37, p_value=0.01, months_progress=3, tau=0.05, i2=10.0, pi_low=-0.1,
               pi_high=0.5, status="published", p_new_school_benefits=0.9, fsm_effect_size=0.1,
               fsm_ci_low=-0.1, fsm_ci_high=0.3, evidence_strength=3, notes="", fsm_months_progress=1)
    per_school = pd.DataFrame([dict(school_urn=u, school_round=ROUND, n_intervention=a, n_control=c, g=0.2,
                                    ci_low=-0.1, ci_high=0.5, eb_g=0.2, note="") for u, (a, c) in schools.items()])
    return pd.DataFrame([row]), {(name, OUTCOME, ROUND): per_school}


def publish_once(con, out: Path, name: str, schools: dict, reg, when: datetime,
                 map_names: bool = True) -> dict[str, bytes]:
    """One publication as the pipeline makes it (pipelines/assets/publishing.py: _inputs, _build,
    evidence_table); ``map_names=False`` is the code before the fix (names as published)."""
    evidence, per_trial = _evidence(name, schools)
    kept = history.read_history(con)
    kept = history.as_registered(kept, reg) if map_names else kept
    previous = site.previous_counts(out, kept, reg if map_names else None)
    published, protected = site.protected_publication(evidence, per_trial, previous)
    school_urns = site.published_schools(published, protected)
    shown = kept if history.same_as_latest(kept, published, school_urns) else pd.concat(
        [kept, history.publication_frame(published, when, school_urns)], ignore_index=True)
    files = site.build_site(evidence, per_trial, pd.DataFrame(), "d", "r", history=shown, previous=previous,
                            registry=reg if map_names else None)
    publish.publish_folder(out, files)
    if not history.same_as_latest(kept, published, school_urns):
        history.append_history(con, published, when, school_urns)
    return files


def two_publications(root: Path, later_name: str, later_registry, map_names: bool = True):
    """The first publication under OLD, the second under ``later_name`` with LATER's counts."""
    con = duckdb.connect(str(root / "warehouse.duckdb"))
    try:
        first = publish_once(con, root / "out", OLD, FIRST, registry(OLD), WHEN[0])
        later = publish_once(con, root / "out", later_name, LATER, later_registry, WHEN[1], map_names)
        kept = history.read_history(con)
    finally:
        con.close()
    return first, later, kept


@pytest.fixture(scope="module")
def renamed(tmp_path_factory):
    return two_publications(tmp_path_factory.mktemp("renamed"), NEW, registry(NEW, OLD))


@pytest.fixture(scope="module")
def not_renamed(tmp_path_factory):
    return two_publications(tmp_path_factory.mktemp("kept"), OLD, registry(OLD))


def _page(files: dict[str, bytes], name: str) -> str:
    text = files[f"{site.trial_slug(name, OUTCOME)}/index.html"].decode()
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", text)).split())


def _school_counts(files: dict[str, bytes], name: str) -> dict[tuple[str, str], str]:
    frame = pd.read_csv(io.BytesIO(files[f"{site.trial_slug(name, OUTCOME)}/schools.csv"]),
                        encoding="utf-8-sig", dtype=str, keep_default_na=False)
    return {(s["school_urn"], c): s[c] for s in frame.to_dict("records") for c in ("n_intervention", "n_control")}


def _evidence_counts(files: dict[str, bytes]) -> dict[str, str]:
    frame = pd.read_csv(io.BytesIO(files["evidence_table.csv"]), encoding="utf-8-sig", dtype=str,
                        keep_default_na=False)
    return {c: frame.loc[0, c] for c in ("pupils_analysed", "pupils_randomised")}


def test_the_renamed_trial_keeps_its_history_under_the_new_name(renamed):
    _, later, kept = renamed
    mapped = history.as_registered(kept, registry(NEW, OLD))
    found = history.trial_history(mapped, NEW, OUTCOME, ROUND)
    assert [pd.Timestamp(t).to_pydatetime() for t in found.rows["published_at"]] == list(WHEN)
    assert list(found.rows["reason"]) == ["first published", f'renamed from "{OLD}" in the registry; '
                                                             "a school's corrected file"]
    page = _page(later, NEW)
    assert "01 October 2026" in page and "02 November 2026" in page  # both publications in its history table
    assert site.trial_slug(OLD, OUTCOME) + "/index.html" not in later  # no page left under the old name


def test_what_changed_says_renamed_not_first_published(renamed):
    _, later, kept = renamed
    page = _page(later, NEW)
    changed = page.split("What changed since the last publication")[1].split("The estimate (dot)")[0]
    assert changed.strip() == f'Renamed from "{OLD}" in the registry; a school\'s corrected file.'
    pubs = history.publications(history.as_registered(kept, registry(NEW, OLD)))
    assert history.what_changed(pubs[0], pubs[1])[0].startswith(
        f'{NEW} ({OUTCOME}, {ROUND}): renamed from "{OLD}" in the registry')
    assert not any("no longer in the evidence table" in s for s in history.what_changed(pubs[0], pubs[1]))


def test_a_school_count_change_of_five_is_blanked_across_the_rename_as_without_it(renamed, not_renamed):
    first, later, _ = renamed
    _, later_kept_name, _ = not_renamed
    school = (URNS[2], "n_intervention")
    before, after = _school_counts(first, OLD)[school], _school_counts(later, NEW)[school]
    assert before == str(FIRST[URNS[2]][0])  # published in the first publication
    assert after == ""  # 5 pupils more would be read off: blanked
    assert _school_counts(later, NEW) == _school_counts(later_kept_name, OLD)  # the same cells blanked
    assert _evidence_counts(later) == _evidence_counts(later_kept_name)


def test_without_the_mapping_the_change_of_five_is_read_off(tmp_path):
    """The red-team finding: with earlier rows keyed by the names as published, the renamed trial
    looks new and its school's count is published 5 above the last publication's."""
    first, later, _ = two_publications(tmp_path, NEW, registry(NEW, OLD), map_names=False)
    school = (URNS[2], "n_intervention")
    assert int(_school_counts(later, NEW)[school]) - int(_school_counts(first, OLD)[school]) == 5


def test_a_rename_without_the_old_name_as_an_alias_is_a_new_trial(tmp_path):
    _, later, kept = two_publications(tmp_path, NEW, registry(NEW))
    assert history.as_registered(kept, registry(NEW)).equals(kept)
    page = _page(later, NEW)
    assert "renamed" not in page
    pubs = history.publications(kept)
    assert history.what_changed(pubs[0], pubs[1]) == [
        f"{NEW} ({OUTCOME}, {ROUND}): first published, +3 months, evidence strength 3 of 5.",
        f"{OLD} ({OUTCOME}, {ROUND}): no longer in the evidence table."]


def test_mapping_is_idempotent_and_keeps_the_published_name():
    kept = pd.DataFrame([{"publication_id": "a", "intervention": "paired  READING", "outcome_measure": OUTCOME},
                         {"publication_id": "a", "intervention": "Other trial", "outcome_measure": OUTCOME}])
    once = history.as_registered(kept, registry(NEW, OLD))
    assert list(once["intervention"]) == [NEW, "Other trial"]
    assert list(once[history.PUBLISHED_AS].fillna("")) == ["paired  READING", ""]
    assert history.as_registered(once, registry(NEW, OLD)).equals(once)
    assert history.as_registered(kept, None) is kept


def test_a_row_already_under_the_registered_name_is_not_joined_by_an_alias_row():
    """Two trials merged (the old one's name made an alias of the other): in an earlier publication
    that holds both, the row under the registered name is the one compared; the other keeps its name."""
    kept = pd.DataFrame([{"publication_id": "a", "intervention": OLD, "outcome_measure": OUTCOME, "round": ROUND},
                         {"publication_id": "a", "intervention": NEW, "outcome_measure": OUTCOME, "round": ROUND},
                         {"publication_id": "b", "intervention": OLD, "outcome_measure": OUTCOME, "round": ROUND}])
    mapped = history.as_registered(kept, registry(NEW, OLD))
    assert list(mapped["intervention"]) == [OLD, NEW, NEW]
    assert list(mapped[history.PUBLISHED_AS].fillna("")) == ["", "", OLD]


def test_earlier_disclosure_states_follow_the_rename():
    """The kept disclosure state of the last publication (keyed by the old name) is read under the new
    name, so a count blanked then and shown now is compared with it, as without a rename."""
    first_evidence, first_schools = _evidence(OLD, FIRST)
    _, _, state = site.protection(first_evidence, first_schools)
    earlier = history.Earlier({("paired reading", "test score", "2025-26", "pupils_analysed"): 1.0}, [state])
    moved = site.earlier_as_registered(earlier, registry(NEW, OLD))
    names = {tuple(c[0])[0] for c in moved.states[0]["cells"]}
    assert names == {"reading partners"}
    assert list(moved.shown) == [("reading partners", "test score", "2025-26", "pupils_analysed")]
    # a registry without the alias leaves the earlier trial as it was (a new trial)
    unchanged = site.earlier_as_registered(earlier, registry(NEW))
    assert {tuple(c[0])[0] for c in unchanged.states[0]["cells"]} == {"paired reading"}
