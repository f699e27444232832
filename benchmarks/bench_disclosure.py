"""Time disclosure control (site.protection) on two successive publications of N schools.

The data: ``--trials`` interventions, each run in two rounds (so each has an all-rounds row and
all-rounds schools.csv); every school joins one or two (trial, round)s with 6 to 150 pupils per arm,
about one in twelve schools with an arm of 1 to 9 pupils (primary suppression), about one in ten
losing a few pupils to attrition, and about one round in five with a single school. The second
publication adds a school of 6 pupils to every round and re-delivers one school per round with 4 more
pupils, so the changes since the first are differences of 1 to 9 (the red team's routes).

It prints the seconds each publication's disclosure control takes (site.protection, the second audited
against the first's kept state and shown counts, as the pipeline does; the pipeline runs it twice per
publication: once in the publishing asset, once inside build_site) and how many cells were blanked.

Run: .venv/bin/python benchmarks/bench_disclosure.py --schools 40 20000
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import pandas as pd

from microtrials.publish import site

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.test_disclosure_linked import build  # noqa: E402 - the tests' evidence and schools tables


def generate(schools: int, trials: int, seed: int = 1) -> dict:
    """trial -> round -> urn -> (intervention, control, lost)."""
    rng = random.Random(seed)
    rounds_of = {f"Trial {t}": {} for t in range(trials)}
    for s in range(schools):
        urn = f"{100000 + s:06d}"
        for _ in range(1 + (rng.random() < 0.3)):
            trial = f"Trial {rng.randrange(trials)}"
            round_name = f"Round {1 + (rng.random() < 0.5)}"
            small = rng.random() < 1 / 12
            arms = [rng.randint(1, 9) if small and a == 0 else rng.randint(6, 150) for a in range(2)]
            lost = rng.randint(1, 5) if rng.random() < 0.1 else 0
            rounds_of[trial].setdefault(round_name, {})[urn] = (arms[0], arms[1], lost)
    for trial, rounds in rounds_of.items():  # about one round in five has a single school
        for round_name, members in rounds.items():
            if rng.random() < 0.2:
                first = sorted(members)[0]
                rounds[round_name] = {first: members[first]}
    return rounds_of


def later(data: dict) -> dict:
    out = {t: {r: dict(s) for r, s in rounds.items()} for t, rounds in data.items()}
    for t, rounds in out.items():
        for r, members in rounds.items():
            first = sorted(members)[0]
            a, c, x = members[first]
            members[first] = (a + 2, c + 2, x)
            members[f"9{t[-1]}{r[-1]}{len(members):03d}"] = (3, 3, 0)
    return out


def blanks(table: pd.DataFrame, per_school: list[pd.DataFrame]) -> int:
    cells = int(table[["pupils_analysed", "pupils_randomised"]].isna().sum().sum())
    return cells + sum(int(f["n_intervention"].isna().sum()) for f in per_school)


def measure(schools: int, trials: int) -> None:
    first = generate(schools, trials)
    timings = []
    previous, earlier = None, []
    for data in (first, later(first)):
        evidence, per_trial = build(data)
        started = time.perf_counter()
        table, per_school, state = site.protection(evidence, per_trial, previous, earlier=earlier)
        stored = json.loads(json.dumps(state))  # as the warehouse keeps it (disclosure_states)
        timings.append((time.perf_counter() - started, blanks(table, per_school), len(table),
                        sum(len(f) for f in per_school)))
        previous, earlier = site.shown_counts(table, per_school), [stored]
    for name, (seconds, blanked, rows, school_rows) in zip(("first", "second"), timings, strict=True):
        print(f"{schools:>6} schools, {trials} trials, {name:>6} publication: {seconds:7.2f} s "
              f"({rows} evidence rows, {school_rows} school rows, {blanked} counts blanked)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schools", type=int, nargs="+", default=[40, 20000])
    parser.add_argument("--trials", type=int, default=0, help="interventions (default: 2 for 40 schools, 40 for more)")
    args = parser.parse_args(argv)
    for schools in args.schools:
        measure(schools, args.trials or (2 if schools <= 100 else 40))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
