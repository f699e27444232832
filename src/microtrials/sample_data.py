"""Synthetic school extracts with planted effects: the committed sample data and benchmark data.

The sample network is Middlesbrough-sized: 40 schools (27 primary, 13 secondary) with 6-digit
URNs in the 1111xx-1115xx range (distinct from the reference extracts' 1116xx). Four trials run
in it, each in 4-15 schools, with 20-120 pupils per school per trial; every school runs at
least one trial and five run two (one file per school holds all its trials):

==========================  ==========================  ============  =======  =======  ====
intervention                outcome_measure             year groups   schools  planted  tau
                                                                               g
==========================  ==========================  ============  =======  =======  ====
Reciprocal reading          NGRT standardised score     2-6 (primary)  14      0.25     0.10
Maths mastery               PUMA standardised score     2-6 (primary)  15      0.10     0.05
Tutoring in Year 7 maths    GL Progress Test in Maths   7 (secondary)   6      0.00     0.05
Talk for writing            Writing assessment          7-9 (secondary) 10     0.35     0.15
==========================  ==========================  ============  =======  =======  ====

How a score is made (all in standardised-score points, population mean 100, SD 15):

- a school's latent level ``a_s ~ N(0, 1)`` with ICC 0.15 (school SD 5.8, pupil SD 13.8);
  the outcome's school level is ``0.8 a_s + 0.6 N(0, 1)``, so schools keep most of their rank;
- a pupil's baseline and outcome share a latent ability, correlation 0.65 within school
  (about 0.66 overall);
- FSM pupils score 4.5 points (0.3 SD) lower on both tests; each school's FSM share is drawn
  from 11%-60% and applied exactly (so every school's rate is between 10% and 60%);
- the intervention adds ``15 * g_s`` points to the outcome, where the school's own effect
  ``g_s ~ N(g, tau)`` (the "planted g" and "tau" above, in SD units of 15 points); there is no
  FSM-specific difference in effect;
- scores are clipped to the tests' reported range 69-141 and rounded to integers.

Because the total outcome SD is close to but not exactly 15 (FSM gap, clipping), a model
recovers g near, not exactly at, the planted value; with 4-15 schools the sampling error
(about 0.05-0.10) is larger than that difference.

Pupils are randomised within school, half to each arm (a random permutation), except that
one Maths mastery school (111571 with the default seed; ``all_intervention_urn()``) put every
pupil in the intervention arm; its school level then shows up as a baseline imbalance between
the arms of the whole trial. About 3%-12% of pupils per school have a blank outcome (missing
at random, both arms). Gender is F/M, SEND (on the SEN register) about 14%, ``send`` Y/N.

The registry's cases (``data/trials.csv`` registers them; data/README.md lists the schools),
drawn from a generator of their own so the four trials above are unchanged: Reciprocal reading
runs a second round of 6 schools (3 also in the first round; their files send the optional
``round`` column), one Maths mastery school writes the alias "Mathematics mastery", and three
primary schools deliver "Philosophy for Children", which nobody registered.

One CSV per school holds all of that school's trials. Run
``python -m microtrials.sample_data [--out data/extracts] [--seed 2026]``; the same seed gives
byte-identical files. ``write_synthetic`` makes one-trial files at scale for benchmarks.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = [
    "school_urn", "pupil_id", "intervention", "outcome_measure", "arm",
    "outcome", "baseline", "fsm", "gender", "year_group", "send",
]

#: Standardised-score scale of the tests (NGRT, PUMA, GL PTM report 69-141).
SCALE_MEAN, SCALE_SD, SCALE_MIN, SCALE_MAX = 100.0, 15.0, 69, 141
ICC = 0.15                  # share of score variance between schools
RHO_BASELINE = 0.65         # pupil-level baseline/outcome correlation
SCHOOL_PERSISTENCE = 0.8    # correlation of a school's baseline and outcome levels
FSM_GAP_SD = 0.3            # disadvantage gap in SD units
SEND_RATE = 0.14
ATTRITION_RANGE = (0.03, 0.12)
FSM_RANGE = (0.11, 0.60)
PUPILS_RANGE = (20, 120)

N_PRIMARY, N_SECONDARY = 27, 13


@dataclass(frozen=True)
class PlantedTrial:
    """One sample trial and the effect planted in it (g and tau in SD units of 15 points)."""

    intervention: str
    outcome_measure: str
    phase: str                  # "primary" or "secondary": which schools can run it
    year_groups: tuple[int, ...]
    n_schools: int
    g: float
    tau: float


TRIALS: tuple[PlantedTrial, ...] = (
    PlantedTrial("Reciprocal reading", "NGRT standardised score", "primary", (2, 3, 4, 5, 6), 14, 0.25, 0.10),
    PlantedTrial("Maths mastery", "PUMA standardised score", "primary", (2, 3, 4, 5, 6), 15, 0.10, 0.05),
    PlantedTrial("Tutoring in Year 7 maths", "GL Progress Test in Maths", "secondary", (7,), 6, 0.00, 0.05),
    PlantedTrial("Talk for writing", "Writing assessment", "secondary", (7, 8, 9), 10, 0.35, 0.15),
)

#: The Maths mastery school that put every pupil in the intervention arm.
ALL_INTERVENTION_TRIAL = "Maths mastery"

# --- the registry's cases (data/trials.csv registers these; docs/registry.md) ---------------
#: Reciprocal reading runs in two rounds: the 14 schools above are its first round; a second
#: round of 6 schools follows, 3 of them also in the first (their files send ``round``).
ROUNDS = ("2025 Autumn", "2026 Summer")
SECOND_ROUND = PlantedTrial("Reciprocal reading", "NGRT standardised score", "primary", (2, 3, 4, 5, 6), 6, 0.25, 0.10)
SCHOOLS_IN_BOTH_ROUNDS = 3
#: An intervention nobody registered: loaded, listed for the officer, never published as evidence.
UNREGISTERED = PlantedTrial("Philosophy for Children", "NGRT standardised score", "primary", (3, 4, 5), 3, 0.10, 0.05)
#: One Maths mastery school writes the registered alias instead of the name.
ALIAS = ("Maths mastery", "Mathematics mastery")


def school_urns() -> tuple[list[str], list[str]]:
    """The fixed primary and secondary URNs of the sample network (independent of the seed)."""
    pool = np.array([u for u in range(111100, 111600)])
    picked = np.random.default_rng(806).choice(pool, N_PRIMARY + N_SECONDARY, replace=False)
    urns = [str(u) for u in np.sort(picked)]
    order = np.random.default_rng(807).permutation(len(urns))
    secondary = sorted(urns[i] for i in order[:N_SECONDARY])
    primary = sorted(urns[i] for i in order[N_SECONDARY:])
    return primary, secondary


def _scores(
    rng: np.random.Generator,
    block: np.ndarray,
    n_blocks: int,
    treated: np.ndarray,
    fsm: np.ndarray,
    g_block: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Baseline and outcome points for pupils in school-trial blocks (vectorised)."""
    n = len(block)
    school_sd = np.sqrt(ICC)
    pupil_sd = np.sqrt(1.0 - ICC)
    a = rng.standard_normal(n_blocks)
    a_out = SCHOOL_PERSISTENCE * a + np.sqrt(1 - SCHOOL_PERSISTENCE**2) * rng.standard_normal(n_blocks)
    z_base = rng.standard_normal(n)
    z_out = RHO_BASELINE * z_base + np.sqrt(1 - RHO_BASELINE**2) * rng.standard_normal(n)
    gap = FSM_GAP_SD * fsm
    baseline = SCALE_MEAN + SCALE_SD * (school_sd * a[block] + pupil_sd * z_base - gap)
    outcome = SCALE_MEAN + SCALE_SD * (school_sd * a_out[block] + pupil_sd * z_out - gap + g_block[block] * treated)
    clip = lambda x: np.clip(np.rint(x), SCALE_MIN, SCALE_MAX).astype(np.int64)  # noqa: E731
    return clip(baseline), clip(outcome)


def _randomise(rng: np.random.Generator, block: np.ndarray, share: np.ndarray | float = 0.5) -> np.ndarray:
    """Within each block, a random ``share`` of pupils (rounded down; per block) are picked."""
    key = rng.random(len(block))
    order = np.lexsort((key, block))                 # by block, then random key
    starts = np.r_[0, np.flatnonzero(np.diff(block[order])) + 1]
    sizes = np.diff(np.r_[starts, len(block)])
    rank = np.arange(len(block)) - np.repeat(starts, sizes)
    treated = np.empty(len(block), dtype=bool)
    picked = np.floor(sizes * np.broadcast_to(share, sizes.shape)).astype(np.int64)
    treated[order] = rank < np.repeat(picked, sizes)
    return treated


def _pupils(
    rng: np.random.Generator,
    urn: np.ndarray,
    intervention: np.ndarray,
    outcome_measure: np.ndarray,
    sizes: np.ndarray,
    g_block: np.ndarray,
    fsm_rate: np.ndarray,
    attrition: np.ndarray,
    year_groups: list[tuple[int, ...]],
) -> pd.DataFrame:
    """Pupil rows for school-trial blocks given per-block parameters (arrays of length n_blocks)."""
    n_blocks = len(sizes)
    block = np.repeat(np.arange(n_blocks), sizes)
    n = len(block)
    fsm = _randomise(rng, block, fsm_rate)     # exact share per block, so rates stay in range
    treated = _randomise(rng, block)
    baseline, outcome = _scores(rng, block, n_blocks, treated, fsm, g_block)
    missing = rng.random(n) < attrition[block]
    # year group: one random year of the trial's range per pupil
    yg_lo = np.array([min(y) for y in year_groups])[block]
    yg_hi = np.array([max(y) for y in year_groups])[block]
    year = yg_lo + np.floor(rng.random(n) * (yg_hi - yg_lo + 1)).astype(np.int64)
    seq = np.arange(n) - np.repeat(np.r_[0, np.cumsum(sizes)[:-1]], sizes)
    frame = pd.DataFrame({
        "school_urn": urn[block],
        "block": block,
        "seq": seq,
        "intervention": intervention[block],
        "outcome_measure": outcome_measure[block],
        "arm": np.where(treated, "intervention", "control"),
        "outcome": pd.array(np.where(missing, 0, outcome), dtype="Int64"),
        "baseline": baseline,
        "fsm": np.where(fsm, "Y", "N"),
        "gender": np.where(rng.random(n) < 0.5, "F", "M"),
        "year_group": year,
        "send": np.where(rng.random(n) < SEND_RATE, "Y", "N"),
    })
    frame.loc[missing, "outcome"] = pd.NA
    return frame


def sample_frame(seed: int = 2026) -> pd.DataFrame:
    """Every pupil row of the sample network, sorted by school, as the extracts hold them."""
    rng = np.random.default_rng(seed)
    primary, secondary = school_urns()
    fsm_by_school = dict(zip(primary + secondary, rng.uniform(*FSM_RANGE, len(primary) + len(secondary))))
    urn, interv, measure, g_block, years = [], [], [], [], []
    one_arm_urn = None
    covered: set[str] = set()
    for trial in TRIALS:
        pool = primary if trial.phase == "primary" else secondary
        # schools not yet in a trial first, so every school of the network has an extract
        fresh = [u for u in rng.permutation(pool) if u not in covered]
        used = [u for u in rng.permutation(pool) if u in covered]
        chosen = sorted((fresh + used)[:trial.n_schools])
        covered.update(chosen)
        effects = trial.g + trial.tau * rng.standard_normal(trial.n_schools)
        for school, g in zip(chosen, effects):
            urn.append(school)
            interv.append(trial.intervention)
            measure.append(trial.outcome_measure)
            g_block.append(g)
            years.append(trial.year_groups)
        if trial.intervention == ALL_INTERVENTION_TRIAL:
            one_arm_urn = chosen[int(rng.integers(trial.n_schools))]
    n_blocks = len(urn)
    urn_a = np.array(urn)
    sizes = rng.integers(PUPILS_RANGE[0], PUPILS_RANGE[1] + 1, n_blocks)
    frame = _pupils(
        rng, urn_a, np.array(interv), np.array(measure), sizes, np.array(g_block),
        np.array([fsm_by_school[u] for u in urn]), rng.uniform(*ATTRITION_RANGE, n_blocks), years,
    )
    everyone_treated = (frame["school_urn"] == one_arm_urn) & (frame["intervention"] == ALL_INTERVENTION_TRIAL)
    frame.loc[everyone_treated, "arm"] = "intervention"
    frame = pd.concat([frame, _registry_cases(seed, frame, primary, fsm_by_school, n_blocks, one_arm_urn)],
                      ignore_index=True)
    frame = frame.sort_values(["school_urn", "block", "seq"], kind="stable").reset_index(drop=True)
    # pupil ids: P + URN + 4-digit sequence, unique within the school across its trials
    within_school = frame.groupby("school_urn").cumcount() + 1
    frame["pupil_id"] = "P" + frame["school_urn"] + within_school.map("{:04d}".format)
    return frame[COLUMNS + ["round"]]


def _registry_cases(seed: int, frame: pd.DataFrame, primary: list[str], fsm_by_school: dict[str, float],
                    first_block: int, one_arm_urn: str | None) -> pd.DataFrame:
    """The blocks the registry's cases add, from a generator of their own (so the four trials'
    pupils stay exactly as before): Reciprocal reading's second round, the unregistered
    intervention; and, in ``frame`` itself, the alias spelling and the ``round`` column of the
    schools in both rounds."""
    rng = np.random.default_rng([seed, 11])
    first_round = sorted(frame.loc[frame["intervention"] == SECOND_ROUND.intervention, "school_urn"].unique())
    both = sorted(rng.choice(first_round, SCHOOLS_IN_BOTH_ROUNDS, replace=False))
    others = [u for u in rng.permutation(primary) if u not in first_round]
    second = sorted(both + others[:SECOND_ROUND.n_schools - SCHOOLS_IN_BOTH_ROUNDS])
    unregistered = sorted(rng.choice(primary, UNREGISTERED.n_schools, replace=False))
    maths = sorted(u for u in frame.loc[frame["intervention"] == ALIAS[0], "school_urn"].unique() if u != one_arm_urn)
    alias_urn = maths[int(rng.integers(len(maths)))]
    frame.loc[(frame["school_urn"] == alias_urn) & (frame["intervention"] == ALIAS[0]), "intervention"] = ALIAS[1]
    frame["round"] = ""
    frame.loc[frame["school_urn"].isin(both) & (frame["intervention"] == SECOND_ROUND.intervention), "round"] = ROUNDS[0]
    urn, interv, measure, g_block, years = [], [], [], [], []
    for trial, schools in ((SECOND_ROUND, second), (UNREGISTERED, unregistered)):
        for school, g in zip(schools, trial.g + trial.tau * rng.standard_normal(len(schools))):
            urn.append(school)
            interv.append(trial.intervention)
            measure.append(trial.outcome_measure)
            g_block.append(g)
            years.append(trial.year_groups)
    sizes = rng.integers(PUPILS_RANGE[0], PUPILS_RANGE[1] + 1, len(urn))
    extra = _pupils(rng, np.array(urn), np.array(interv), np.array(measure), sizes, np.array(g_block),
                    np.array([fsm_by_school[u] for u in urn]), rng.uniform(*ATTRITION_RANGE, len(urn)), years)
    extra["block"] += first_block
    extra["round"] = ""
    extra.loc[extra["school_urn"].isin(both) & (extra["intervention"] == SECOND_ROUND.intervention), "round"] = ROUNDS[1]
    return extra


def registry_cases(seed: int = 2026) -> dict[str, object]:
    """Which schools the registry's cases fell on (for data/trials.csv and data/README.md)."""
    frame = sample_frame(seed)
    reading = frame[frame["intervention"] == SECOND_ROUND.intervention]
    both = sorted(reading.loc[reading["round"] != "", "school_urn"].unique())
    return {
        "both_rounds": both,
        "alias_school": sorted(frame.loc[frame["intervention"] == ALIAS[1], "school_urn"].unique()),
        "unregistered_schools": sorted(frame.loc[frame["intervention"] == UNREGISTERED.intervention, "school_urn"].unique()),
    }


def all_intervention_urn(seed: int = 2026) -> str:
    """The URN of the school that put every pupil in the intervention arm."""
    frame = sample_frame(seed)
    trial = frame[frame["intervention"] == ALL_INTERVENTION_TRIAL]
    arms = trial.groupby("school_urn")["arm"].nunique()
    return str(arms[arms == 1].index[0])


def _write_frame(path: Path, frame: pd.DataFrame) -> None:
    frame.to_csv(path, index=False, lineterminator="\n", encoding="utf-8")


def write_extracts(folder: Path, seed: int = 2026) -> list[Path]:
    """Write one extract CSV per sample school (all its trials) into ``folder``; return the paths.

    The same seed gives byte-identical files. Existing files for other URNs are left alone.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frame = sample_frame(seed)
    paths = []
    for urn, rows in frame.groupby("school_urn", sort=True):
        path = folder / f"{urn}.csv"
        # only a school in both rounds of a trial sends the optional round column
        _write_frame(path, rows if (rows["round"] != "").any() else rows[COLUMNS])
        paths.append(path)
    return paths


def write_synthetic(
    folder: Path,
    n_schools: int,
    pupils_per_school: int,
    seed: int = 2026,
    g: float = 0.2,
    tau: float = 0.1,
    intervention: str = "Synthetic intervention",
    outcome_measure: str = "Synthetic standardised score",
) -> list[Path]:
    """Write ``n_schools`` one-trial extracts of ``pupils_per_school`` pupils each, fast, for benchmarks.

    URNs are 200000, 200001, ... (never clashing with the sample network). Same score model as
    the sample data: planted effect ``g`` with between-school SD ``tau``, FSM rate 10%-60%,
    3%-12% attrition. The whole set is rendered with one ``to_csv`` call and split by line.
    """
    if n_schools < 1 or pupils_per_school < 2:
        raise ValueError("need at least 1 school and 2 pupils per school")
    if n_schools > 800000:
        raise ValueError("at most 800000 schools fit in 6-digit URNs from 200000")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    urn = np.array([str(200000 + i) for i in range(n_schools)])
    sizes = np.full(n_schools, pupils_per_school)
    frame = _pupils(
        rng, urn, np.full(n_schools, intervention, dtype=object), np.full(n_schools, outcome_measure, dtype=object),
        sizes, g + tau * rng.standard_normal(n_schools), rng.uniform(*FSM_RANGE, n_schools),
        rng.uniform(*ATTRITION_RANGE, n_schools), [(2, 3, 4, 5, 6)] * n_schools,
    )
    frame["pupil_id"] = "P" + frame["school_urn"] + (frame["seq"] + 1).map("{:04d}".format)
    text = frame[COLUMNS].to_csv(index=False, lineterminator="\n")
    lines = text.split("\n")
    header, body = lines[0], lines[1:-1]
    paths = []
    for i, school in enumerate(urn):
        path = folder / f"{school}.csv"
        chunk = body[i * pupils_per_school:(i + 1) * pupils_per_school]
        path.write_text(header + "\n" + "\n".join(chunk) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


BUNDLED_EXTRACTS = Path(__file__).resolve().parents[2] / "data" / "extracts"
MANIFEST_MODULE = Path(__file__).resolve().parent / "sample_manifest.py"


def write_manifest(folder: Path = BUNDLED_EXTRACTS, module: Path = MANIFEST_MODULE) -> dict[str, str]:
    """Write ``microtrials/sample_manifest.py``: the sha256 of every ``*.csv`` in the bundled sample
    folder, the only files the public sample key may hash (``microtrials.ingest.privacy``)."""
    import hashlib

    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).glob("*.csv"))}
    lines = "".join(f'    "{name}": "{digest}",\n' for name, digest in digests.items())
    module.write_text(
        '"""sha256 of each bundled sample extract in data/extracts: the only files the public sample key\n'
        'may hash. Generated by ``python -m microtrials.sample_data``; do not edit."""\n\n'
        f"SAMPLE_SHA256 = {{\n{lines}}}\n",
        encoding="utf-8",
    )
    return digests


def main(argv: list[str] | None = None) -> int:
    """``python -m microtrials.sample_data``: write the sample extracts."""
    parser = argparse.ArgumentParser(prog="python -m microtrials.sample_data", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/extracts"))
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args(argv)
    paths = write_extracts(args.out, args.seed)
    if args.out.resolve() == BUNDLED_EXTRACTS:
        write_manifest(BUNDLED_EXTRACTS)  # the sample key applies to exactly these bytes
    size = sum(p.stat().st_size for p in paths)
    print(f"wrote {len(paths)} extracts ({size / 1024:.0f} KiB) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
