"""Model-based test: random delivery sequences against "the latest accepted delivery per (school, trial, round) wins"
(a withdrawn school's very file, sent again under any name, held until accepted)."""

from __future__ import annotations

import hashlib
import itertools
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from microtrials.publish import history
from microtrials.ingest import registry
from microtrials.ingest import warehouse
from microtrials.ingest.loading import accept_file, load_file, withdraw
from microtrials.ingest.privacy import pseudonymise
from tests.conftest import EXTRACT_HEADER, extract_csv

KEY = b"stateful-test-key-not-secret-0123456789"
HEADER = (*EXTRACT_HEADER, "round")
REGISTRY = (
    "intervention,outcome_measure,round,start_date,end_date,schools,aliases\n"
    "Café Readers,NGRT,2025 Autumn,2025-09-01,2025-12-19,222001 222002,cafe readers|CR\n"
    "Café Readers,NGRT,2026 Spring,2026-01-05,2026-03-27,222001 222003,cafe readers|CR\n"
    "Maths,PUMA,2025-26,2025-09-01,2026-07-17,222001 222002 222003,\n"
)
SCHOOLS = ("222001", "222002", "222003")
# trial -> (spellings a school may send, outcome measure, rounds it may send)
TRIALS = {
    "cafe": (("Café Readers", "cafe readers", "CR", "CAFÉ  READERS", "Cafe Readers"), "NGRT",
             (None, "2025 Autumn", "2026 spring", "2026 Spring")),
    "maths": (("Maths", "maths", " MATHS "), "PUMA", (None, "2025-26")),
}
PLANNED = {("cafe", "222001"): "", ("cafe", "222002"): "2025 autumn", ("cafe", "222003"): "2026 spring",
           ("maths", "222001"): "2025-26", ("maths", "222002"): "2025-26", ("maths", "222003"): "2025-26"}


def model_round(trial: str, school: str, sent: str | None) -> str:
    """The round the model files a block under: a registered round sent, else the school's plan."""
    if sent and " ".join(sent.split()).casefold() in {"2025 autumn", "2026 spring", "2025-26"}:
        return " ".join(sent.split()).casefold()
    return PLANNED[trial, school]


@dataclass(frozen=True)
class Block:
    """Rows of one trial (spelled one way, one round or none) in a file: pupils start..start+count-1."""

    trial: str
    spelling: int
    round: int
    start: int
    count: int
    no_outcome: int  # the first this-many pupils have no post-test


blocks = st.builds(
    Block,
    trial=st.sampled_from(sorted(TRIALS)),
    spelling=st.integers(0, 4),
    round=st.integers(0, 3),
    start=st.sampled_from([0, 4, 8]),
    count=st.integers(1, 10),
    no_outcome=st.integers(0, 10),
)


def block_rows(school: str, block: Block) -> list[list[str]]:
    spellings, measure, rounds = TRIALS[block.trial]
    spelling = spellings[block.spelling % len(spellings)]
    sent = rounds[block.round % len(rounds)]
    return [[school, f"{school}-{block.trial}-{sent or ''}-{i}", spelling, measure, ("intervention", "control")[i % 2],
             "" if i - block.start < block.no_outcome else str(90 + i), str(85 + i), "N", "F", "7", "N", sent or ""]
            for i in range(block.start, block.start + block.count)]


def block_key(school: str, block: Block) -> tuple[str, str, str]:
    sent = TRIALS[block.trial][2][block.round % len(TRIALS[block.trial][2])]
    return school, block.trial, model_round(block.trial, school, sent)


class Deliveries(RuleBasedStateMachine):
    """The warehouse against a dict: (school, trial, round) -> {pupil_id: has an outcome}."""

    @initialize()
    def start(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="stateful-"))
        self.con = warehouse.connect(":memory:")
        parsed = registry.read_registry(REGISTRY.encode())
        history.store_registry(self.con, parsed, REGISTRY, datetime(2026, 9, 1))
        self.model: dict[tuple[str, str, str], dict[str, bool]] = {}
        self.files: dict[str, tuple[str, list[Block]]] = {}  # name -> (school, blocks)
        self.status: dict[str, str] = {}  # name -> what the warehouse recorded: applied, held, rejected
        self.withdrawn: set[tuple[str, str, str]] = set()  # keys withdrawn and not delivered since
        self.applied_by: dict[str, set[tuple]] = {}  # a file's sha256 -> the keys it was applied to
        self.names = itertools.count()
        self.recorded = 0

    def teardown(self) -> None:
        if hasattr(self, "con"):
            self.con.close()

    # ---- the model -------------------------------------------------------------------------------

    def delivered(self, school: str, file_blocks: list[Block]) -> dict[tuple, dict[str, bool]]:
        """The file's pupils per model key (pupil_id -> has an outcome)."""
        out: dict[tuple, dict[str, bool]] = {}
        for block in file_blocks:
            for row in block_rows(school, block):
                out.setdefault(block_key(school, block), {})[row[1]] = row[5] != ""
        return out

    def would_hold(self, name: str, key: tuple, new: dict[str, bool]) -> bool:
        """Held: it would lose more than half, or this very content was applied to a key since withdrawn."""
        if key in self.withdrawn and key in self.applied_by.get(self.content(name), set()):
            return True
        old = self.model.get(key, {})
        return 2 * len(new) < len(old) or 2 * sum(new.values()) < sum(old.values())

    def content(self, name: str) -> str:
        return hashlib.sha256((self.folder / name).read_bytes()).hexdigest()

    def apply(self, name: str, changes: dict[tuple, dict[str, bool]], state: str = "applied") -> None:
        """The model after ``changes``, and each recorded change set's scores_changed against it (a
        pupil's score is 90 + i or blank, so it changes only when given or blanked)."""
        recorded = self.con.execute(
            "SELECT key_intervention, key_round, scores_changed FROM change_sets WHERE file_name = ? AND state = ? "
            "AND recorded_at = (SELECT max(recorded_at) FROM change_sets WHERE file_name = ? AND state = ?)",
            [name, state, name, state]).fetchall()
        got = {(name.split("_")[0], "cafe" if trial == "café readers" else "maths", round_key): n
               for trial, round_key, n in recorded}
        want = {key: sum(old != new[pupil] for pupil, old in self.model.get(key, {}).items() if pupil in new)
                for key, new in changes.items()}
        assert got == want, (got, want)
        for key, new in changes.items():
            self.model[key] = new
            self.withdrawn.discard(key)
            self.applied_by.setdefault(self.content(name), set()).add(key)

    def expect_load(self, name: str, report) -> None:
        school, file_blocks = self.files[name]
        changes = self.delivered(school, file_blocks)
        held = {key for key, new in changes.items() if self.would_hold(name, key, new)}
        self.apply(name, {key: new for key, new in changes.items() if key not in held})
        assert len(report.changes) == len(changes), (report.changes, changes)
        assert sum("held, not applied" in line for line in report.changes) == len(held)
        expected = "loaded" if not held else ("held" if len(held) == len(changes) else "partly held")
        assert report.status == expected, (report.status, expected, report.reason)
        self.status[name] = report.status
        self.recorded += len(changes)
        event(f"delivery: {report.status}")

    # ---- rules ------------------------------------------------------------------------------------

    @rule(school=st.sampled_from(SCHOOLS), file_blocks=st.lists(blocks, min_size=1, max_size=3))
    def deliver(self, school: str, file_blocks: list[Block]) -> None:
        """A new or corrected file: one to three trials, any spelling, with or without rounds."""
        seen = set()
        unique = []
        for block in file_blocks:  # one block per trial and round sent (a pupil twice in one would be quarantined)
            rounds = TRIALS[block.trial][2]
            sent = str(rounds[block.round % len(rounds)] or "").casefold()
            if (block.trial, sent) not in seen:
                seen.add((block.trial, sent))
                unique.append(block)
        name = f"{school}_{next(self.names)}.csv"
        self.files[name] = (school, unique)
        path = self.folder / name
        path.write_text(extract_csv([row for b in unique for row in block_rows(school, b)], HEADER), encoding="utf-8")
        self.expect_load(name, load_file(self.con, path, KEY))

    @rule(school=st.sampled_from(SCHOOLS))
    def deliver_unreadable(self, school: str) -> None:
        """A file rejected whole (no arm column): nothing changes."""
        name = f"{school}_{next(self.names)}.csv"
        (self.folder / name).write_text(f"school_urn,pupil_id,intervention,outcome_measure,outcome\n{school},X,Maths,PUMA,1\n")
        report = load_file(self.con, self.folder / name, KEY)
        assert report.status == "rejected" and report.changes == []

    @precondition(lambda self: self.files)
    @rule(data=st.data())
    def deliver_copy(self, data) -> None:
        """A file sent again under a new name (the very same bytes), e.g. after its school was withdrawn."""
        earlier = data.draw(st.sampled_from(sorted(self.files)))
        name = f"{self.files[earlier][0]}_{next(self.names)}.csv"
        self.files[name] = self.files[earlier]
        shutil.copyfile(self.folder / earlier, self.folder / name)
        refused = any(k in self.withdrawn and k in self.applied_by.get(self.content(name), set())
                      for k in self.delivered(*self.files[name]))
        event(f"copy: {'of a withdrawn file' if refused else 'plain'}")
        self.expect_load(name, load_file(self.con, self.folder / name, KEY))

    @precondition(lambda self: self.files)
    @rule(data=st.data())
    def load_again(self, data) -> None:
        """The same file in the folder at the next run: nothing changes (held stays held, and a withdrawn
        school's file stays unchanged)."""
        name = data.draw(st.sampled_from(sorted(self.files)))
        report = load_file(self.con, self.folder / name, KEY)
        assert report.status == ("unchanged" if self.status[name] == "loaded" else self.status[name])

    def acceptable(self, name: str) -> bool:
        """A held file, or one loaded whose very content was applied to a key since withdrawn."""
        school, file_blocks = self.files[name]
        return self.status[name] != "loaded" or any(
            k in self.withdrawn and k in self.applied_by.get(self.content(name), set())
            for k in self.delivered(school, file_blocks))

    @precondition(lambda self: any(self.acceptable(n) for n in self.status))
    @rule(data=st.data())
    def accept(self, data) -> None:
        """The officer accepts a held file, or a withdrawn school's file: what would be held now is
        applied, the rest left alone."""
        name = data.draw(st.sampled_from(sorted(n for n in self.status if self.acceptable(n))))
        event(f"accept: a {'held' if self.status[name] != 'loaded' else 'withdrawn school'}'s file")
        school, file_blocks = self.files[name]
        report = accept_file(self.con, self.folder / name, KEY)
        held = {k: new for k, new in self.delivered(school, file_blocks).items() if self.would_hold(name, k, new)}
        self.apply(name, held, "accepted")
        if held:
            assert report.status == "loaded" and len(report.changes) == len(held)
            assert all(line.endswith("accepted by the officer") for line in report.changes)
            self.status[name] = "loaded"
            self.recorded += len(held)
            event("accept: applied")
        else:
            assert report.status == "not held" and report.changes == []
            event("accept: nothing held any more")

    @precondition(lambda self: any(self.model.values()))
    @rule(school=st.sampled_from(SCHOOLS), trial=st.sampled_from([None, "cafe", "maths"]))
    def withdraw_school(self, school: str, trial: str | None) -> None:
        """A school leaves (everything, or one trial given by an alias)."""
        name = {None: None, "cafe": "CR", "maths": "maths"}[trial]
        done = withdraw(self.con, school, name)
        gone = [k for k in self.model if k[0] == school and self.model[k] and (trial is None or k[1] == trial)]
        assert len(done) == len(gone), ([c.message for c in done], gone)
        assert all(c.message.endswith(f"withdrawn, {c.pupils_before} pupil{'s' if c.pupils_before != 1 else ''} removed")
                   for c in done)
        event(f"withdraw: {'some rows' if gone else 'nothing to remove'}")
        for key in gone:
            del self.model[key]
            self.withdrawn.add(key)
        self.recorded += len(gone)

    # ---- after every step --------------------------------------------------------------------------

    @invariant()
    def warehouse_holds_the_model(self) -> None:
        if not hasattr(self, "con"):
            return
        got = sorted(self.con.execute("SELECT school_urn, pupil_key, outcome IS NOT NULL FROM pupils").fetchall())
        ids = [(key[0], pupil, scored) for key, pupils in self.model.items() for pupil, scored in pupils.items()]
        hashed = pseudonymise(pa.array([pupil for _, pupil, _ in ids], pa.string()), KEY).to_pylist()
        want = sorted((school, h, scored) for (school, _, scored), h in zip(ids, hashed))
        assert got == want
        per_key = self.con.execute("SELECT count(*) FROM change_sets").fetchone()[0]
        assert per_key == self.recorded  # every change set recorded once


TestDeliveries = pytest.mark.timeout(900)(pytest.mark.slow(Deliveries.TestCase))  # hundreds of sequences: the "ci" profile (tests/conftest.py)
