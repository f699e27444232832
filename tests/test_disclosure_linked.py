"""Disclosure control across every table of a publication and between two publications: the test does
the subtractions. Every published pupil count (evidence_table.csv, every <trial>/schools.csv) is read
back with the set of pupils it counts; for every pair of published counts, within one publication and
across two successive ones, where one counts a subset of the other's pupils, the difference must not
be a group of 1 to 9 pupils. The cases are the issue's: a blanked round under the all-rounds row, a
school blanked in one schools.csv and not in another, a one-school pilot and the next round's plan, a
school of 6 joining between publications, a school sending 4 more pupils."""

from __future__ import annotations

import io
import itertools
import re
from datetime import datetime
from html import unescape
from pathlib import Path

import pandas as pd
import pytest

from microtrials.publish import history
from microtrials.stats import planner
from microtrials.publish import publish
from microtrials.publish import site
from microtrials.ingest.names import match_key

ALL = "all rounds"
AUTUMN, SUMMER = "2025 Autumn", "2026 Summer"
THRESHOLD = 10

# trial -> round -> school -> (analysed in intervention, analysed in control, randomised but not analysed)
FIRST = {
    "Reciprocal reading": {
        AUTUMN: {f"1111{i:02d}": (30 + i, 31 + i % 3, 2) for i in range(14)},
        SUMMER: {"390301": (4, 4, 0)},  # the blanked round: 8 pupils
    },
    "Talk for writing": {  # one round, 9 schools, 377 pupils
        "2025-26": {"222201": (20, 21, 1), "222202": (25, 22, 3), "222203": (18, 19, 0), "222204": (30, 28, 2),
                    "222205": (15, 16, 1), "222206": (26, 24, 4), "222207": (12, 11, 0), "222208": (22, 20, 1),
                    "222209": (23, 25, 2)},
    },
    "Pilot tutoring": {"2025 Pilot": {"333301": (4, 4, 0)}},  # a one-school pilot of 8 pupils
    "Maths mastery": {  # a school blanked as secondary in one table must be blanked in every table
        AUTUMN: {"444401": (3, 4, 0), "444402": (40, 41, 2), "444403": (12, 13, 1), "444404": (50, 48, 3)},
        SUMMER: {"444403": (14, 12, 0), "444405": (30, 31, 1), "444406": (27, 26, 2)},
    },
}


def second() -> dict:
    data = {t: {r: dict(s) for r, s in rounds.items()} for t, rounds in FIRST.items()}
    data["Talk for writing"]["2025-26"]["390302"] = (3, 3, 0)  # a school of 6 joins: 377 -> 383
    data["Reciprocal reading"][AUTUMN]["111105"] = (37, 35, 2)  # re-delivered with 4 more pupils analysed
    return data


def _evidence_row(trial: str, round_name: str, schools: dict) -> dict:
    analysed = sum(a + c for a, c, _ in schools.values())
    lost = sum(x for _, _, x in schools.values())
    return dict(intervention=trial, outcome_measure="Test score", schools=len(schools),
                schools_both_arms=len(schools), pupils_randomised=analysed + lost, pupils_analysed=analysed,
                attrition_pct=round(100 * lost / (analysed + lost), 1), effect_size=0.2, ci_low=0.1, ci_high=0.3,
                p_value=0.01, months_progress=3, tau=0.05, i2=10.0, pi_low=-0.1, pi_high=0.5, status="published",
                p_new_school_benefits=0.9, fsm_effect_size=0.1, fsm_ci_low=-0.1, fsm_ci_high=0.3,
                evidence_strength=3, notes="", fsm_months_progress=1, round=round_name, outcome_role="primary")


def _school_rows(schools: dict, round_name: str) -> list[dict]:
    return [dict(school_urn=urn, school_round=round_name, n_intervention=a, n_control=c, g=0.2, ci_low=-0.1,
                 ci_high=0.5, eb_g=0.2, note="") for urn, (a, c, _) in sorted(schools.items())]


def build(data: dict) -> tuple[pd.DataFrame, dict]:
    """The evidence table and per-school tables the pipeline would hand build_site for ``data``."""
    rows, per_trial = [], {}
    for trial, rounds in data.items():
        everyone: dict = {}
        for round_name, schools in rounds.items():
            rows.append(_evidence_row(trial, round_name, schools))
            per_trial[(trial, "Test score", round_name)] = pd.DataFrame(_school_rows(schools, round_name))
            everyone.update({(urn, round_name): v for urn, v in schools.items()})
        if len(rounds) > 1:
            merged = {f"{u}|{r}": v for (u, r), v in everyone.items()}
            rows.append(_evidence_row(trial, ALL, merged))
            per_trial[(trial, "Test score", ALL)] = pd.DataFrame(
                [row for r, schools in rounds.items() for row in _school_rows(schools, r)])
    return pd.DataFrame(rows), per_trial


def published_counts(files: dict[str, bytes], data: dict) -> list[tuple[str, frozenset, float]]:
    """(where, the pupils it counts, value) for every non-blank pupil count in the publication's CSVs.

    Pupils are numbered within their school, round and arm: a re-delivery with more pupils keeps the
    first ones, so a count that grew between publications counts a superset of the pupils before."""
    def pupils(t, rounds, schools=None, arms=("intervention", "control")):
        return frozenset((t, r, s, arm, i) for r in rounds for s in data[t][r] if schools is None or s in schools
                         for arm in arms for i in range(data[t][r][s][("intervention", "control", "lost").index(arm)]))
    evidence = pd.read_csv(io.BytesIO(files["evidence_table.csv"]), encoding="utf-8-sig", dtype={"round": str})
    folders, _ = site.trial_folders(site.page_names(evidence))
    cells = []
    for row, folder in zip(evidence.to_dict("records"), folders, strict=True):
        t, r = row["intervention"], row["round"]
        rounds = [x for x in data[t]] if r == ALL else [r]
        for column, arms in (("pupils_analysed", ("intervention", "control")),
                             ("pupils_randomised", ("intervention", "control", "lost"))):
            if pd.notna(row[column]):
                cells.append((f"evidence {t}/{r} {column}", pupils(t, rounds, arms=arms), float(row[column])))
        name = f"{folder}/schools.csv"
        if name in files:
            for school in pd.read_csv(io.BytesIO(files[name]), encoding="utf-8-sig", dtype=str).to_dict("records"):
                for column, arm in (("n_intervention", "intervention"), ("n_control", "control")):
                    if isinstance(school[column], str) and school[column]:
                        cells.append((f"{name} {school['school_urn']} {school['school_round']} {column}",
                                      pupils(t, [school["school_round"]], {school["school_urn"]}, (arm,)),
                                      float(school[column])))
    return cells


def small_differences(cells: list[tuple[str, frozenset, float]]) -> list[tuple[str, str, float]]:
    """Every pair of published counts where one counts a subset of the other's pupils and their
    difference is a group of 1 to 9 pupils."""
    found = []
    for (a, pa, va), (b, pb, vb) in itertools.permutations(cells, 2):
        if pb < pa and 0 < va - vb < THRESHOLD:
            found.append((a, b, va - vb))
    return found


def small_published(cells) -> list[tuple[str, float]]:
    return [(where, v) for where, _, v in cells if 0 < v < THRESHOLD]


def publication(data: dict, out: Path, kept: pd.DataFrame | None, when: datetime):
    evidence, per_trial = build(data)
    previous = site.previous_counts(out, kept)
    published, protected = site.protected_publication(evidence, per_trial, previous)
    shown = history.publication_frame(published, when, site.published_schools(published, protected))
    kept = shown if kept is None else pd.concat([kept, shown], ignore_index=True)
    files = site.build_site(evidence, per_trial, pd.DataFrame(), "d", "r", history=kept, previous=previous)
    publish.publish_folder(out, files)
    return files, kept


@pytest.fixture(scope="module")
def two_publications(tmp_path_factory):
    out = tmp_path_factory.mktemp("linked") / "out"
    first, kept = publication(FIRST, out, None, datetime(2026, 10, 1, 9))
    later, _ = publication(second(), out, kept, datetime(2026, 11, 1, 9))
    return first, later


def test_the_cases_are_what_the_issue_describes():
    """Without disclosure control across tables, these data give the issue's subtractions back."""
    evidence, _ = build(FIRST)
    reading = evidence[evidence["intervention"] == "Reciprocal reading"].set_index("round")
    assert reading.loc[ALL, "pupils_analysed"] - reading.loc[AUTUMN, "pupils_analysed"] == 8
    talk = [build(d)[0].set_index("intervention").loc["Talk for writing", "pupils_analysed"] for d in (FIRST, second())]
    assert talk == [377, 383]


def test_no_published_difference_within_one_publication_reveals_a_small_group(two_publications):
    for files, data in zip(two_publications, (FIRST, second()), strict=True):
        cells = published_counts(files, data)
        assert len(cells) > 60  # the test reads the publication: most counts stay published
        assert small_published(cells) == []
        assert small_differences(cells) == []


def test_no_difference_between_two_successive_publications_reveals_a_small_group(two_publications):
    first, later = two_publications
    cells = [(f"first: {w}", p, v) for w, p, v in published_counts(first, FIRST)] + \
            [(f"later: {w}", p, v) for w, p, v in published_counts(later, second())]
    assert small_differences(cells) == []


def test_the_joined_small_school_is_not_named_and_the_total_does_not_move_by_six(two_publications):
    first, later = two_publications
    folder = site.trial_slug("Talk for writing", "Test score")
    page = " ".join(unescape(re.sub(r"<[^>]+>", " ", later[f"{folder}/index.html"].decode())).split())
    assert "390302" not in page.split("What changed")[-1].split("The estimate")[0]
    assert "a school joined" in page.casefold()
    before = pd.read_csv(io.BytesIO(first["evidence_table.csv"]), encoding="utf-8-sig").set_index("intervention")
    after = pd.read_csv(io.BytesIO(later["evidence_table.csv"]), encoding="utf-8-sig").set_index("intervention")
    assert before.loc["Talk for writing", "pupils_analysed"] == 377
    assert pd.isna(after.loc["Talk for writing", "pupils_analysed"])  # 383 would give the 6 back


def test_a_school_blanked_in_one_table_is_blanked_in_every_table(two_publications):
    first, _ = two_publications
    blank = {}
    for name, data in first.items():
        if name.endswith("schools.csv") and name.startswith("maths-mastery"):
            frame = pd.read_csv(io.BytesIO(data), encoding="utf-8-sig", dtype=str, keep_default_na=False)
            for school in frame.to_dict("records"):
                blank.setdefault((school["school_urn"], school["school_round"]), set()).add(school["n_control"] == "")
    assert all(len(states) == 1 for states in blank.values()), blank


def test_the_plan_after_a_blanked_pilot_does_not_quote_its_size(two_publications):
    first, _ = two_publications
    evidence, per_trial = build(FIRST)
    published, _ = site.protected_publication(evidence, per_trial)
    pilot = evidence[evidence["intervention"] == "Pilot tutoring"]
    assert planner.pupils_per_school(pilot, "Pilot tutoring") == 8  # the raw figure would say "about 8 pupils"
    shown = site.with_published_counts(pilot, published)
    assert planner.pupils_per_school(shown, "Pilot tutoring") == planner.DEFAULT_PUPILS_PER_SCHOOL
