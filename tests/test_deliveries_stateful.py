"""Model-based test: random delivery sequences against "the latest accepted delivery per (school, trial, round) wins"
(after a withdrawal, any later file of the school for a trial round it covers held until accepted, whatever its bytes:
every trial and round for a whole-school withdrawal, every round of the trial for one trial's)."""

from __future__ import annotations

import itertools
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from microtrials.publish import history
from microtrials.ingest import registry
from microtrials.ingest import warehouse
from microtrials.ingest.loading import accept_file, load_file, withdraw
from microtrials.ingest.privacy import pseudonymise
from tests.conftest import EXTRACT_HEADER, extract_csv
from tests.helpers.examples import examples

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


def row_key(row: list[str]) -> tuple[str, str, str]:
    """The model key (school, trial, round) of an extract row."""
    trial = "cafe" if row[3] == "NGRT" else "maths"
    return row[0], trial, model_round(trial, row[0], row[11] or None)


def write_rows(path: Path, rows: list[list[str]], crlf: bool = False) -> None:
    """The extract file of ``rows`` (\n line ends, or \r\n as a spreadsheet saves it again)."""
    text = extract_csv(rows, HEADER)
    path.write_bytes((text.replace("\n", "\r\n") if crlf else text).encode("utf-8"))


class Deliveries(RuleBasedStateMachine):
    """The warehouse against a dict: (school, trial, round) -> {pupil_id: outcome score sent ('' for none)}."""

    @initialize(school=st.sampled_from(SCHOOLS), file_blocks=st.lists(blocks, min_size=1, max_size=3))
    def start(self, school: str, file_blocks: list[Block]) -> None:
        """An empty warehouse with the registry, then a first file (every sequence has something to change)."""
        self.folder = Path(tempfile.mkdtemp(prefix="stateful-"))
        self.con = warehouse.connect(":memory:")
        parsed = registry.read_registry(REGISTRY.encode())
        history.store_registry(self.con, parsed, REGISTRY, datetime(2026, 9, 1))
        self.model: dict[tuple[str, str, str], dict[str, str]] = {}
        self.files: dict[str, list[list[str]]] = {}  # name -> its rows
        self.status: dict[str, str] = {}  # name -> what the warehouse recorded: applied, held, rejected
        self.clock = itertools.count()  # orders withdrawals and applied changes
        self.withdrawals: dict[tuple[str, str | None], int] = {}  # (school, trial or None for all) -> when, latest
        self.applied_at: dict[tuple[str, str, str], int] = {}  # key -> when last applied or accepted
        self.stored_when_withdrawn: set[tuple[str, str, str]] = set()  # keys whose rows a withdrawal removed
        self.names = itertools.count()
        self.recorded = 0
        self.deliver(school, file_blocks)

    def teardown(self) -> None:
        if hasattr(self, "con"):
            self.con.close()

    # ---- the model -------------------------------------------------------------------------------

    def delivered(self, name: str) -> dict[tuple, dict[str, str]]:
        """The file's pupils per model key (pupil_id -> outcome score, '' for none)."""
        out: dict[tuple, dict[str, str]] = {}
        for row in self.files[name]:
            out.setdefault(row_key(row), {})[row[1]] = row[5]
        return out

    def withdrawn(self, key: tuple) -> str:
        """'network' or 'trial': the latest withdrawal of the key's school covering its trial (the whole school,
        or that trial) recorded after the key was last applied or accepted; '' for none."""
        since = self.applied_at.get(key, -1)
        covering = [(when, "network" if trial is None else "trial") for (school, trial), when in self.withdrawals.items()
                    if school == key[0] and trial in (None, key[1]) and when > since]
        return max(covering)[1] if covering else ""

    def would_hold(self, key: tuple, new: dict[str, str]) -> bool:
        """Held: the school was withdrawn from the key (whatever the file's bytes), or it would lose more than half
        of the stored pupils (those it leaves out, whatever it adds) or of the outcome scores."""
        return bool(self.hold_rule(key, new))

    def hold_rule(self, key: tuple, new: dict[str, str]) -> str:
        """Which rule holds the change ('' for none), the first that applies, as the reason says it."""
        if self.withdrawn(key):
            return "withdrawn"
        old = self.model.get(key, {})
        scored = [sum(score != "" for score in pupils.values()) for pupils in (new, old)]
        if 2 * len(new) < len(old):
            return "fewer pupils"
        if 2 * len(old.keys() - new.keys()) > len(old):
            event("hold: more than half of the stored pupils left out, though the file keeps the count")
            return "pupils removed"
        return "fewer scores" if 2 * scored[0] < scored[1] else ""

    def apply(self, name: str, changes: dict[tuple, dict[str, str]], state: str = "applied") -> None:
        """The model after ``changes``, and each recorded change set's scores_changed against it (given,
        blanked or another value)."""
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
            self.applied_at[key] = next(self.clock)

    def expect_load(self, name: str, report) -> None:
        changes = self.delivered(name)
        held = {key for key, new in changes.items() if self.would_hold(key, new)}
        removed = [key for key, new in changes.items() if self.hold_rule(key, new) == "pupils removed"]
        withdrawn = {key: self.withdrawn(key) for key in held if self.withdrawn(key)}
        self.apply(name, {key: new for key, new in changes.items() if key not in held})
        if withdrawn:
            event("delivery: held, the school withdrawn from the trial round")
        if set(withdrawn) - self.stored_when_withdrawn:
            event("delivery: held, a trial round the school had sent nothing for when withdrawn")
        assert len(report.changes) == len(changes), (report.changes, changes)
        assert sum("held, not applied" in line for line in report.changes) == len(held)
        assert sum(": held, not applied: it would remove " in line for line in report.changes) == len(removed)
        for scope, words in (("trial", "this trial"), ("network", "the network")):
            lines = [line for line in report.changes if f"the school was withdrawn from {words} on " in line]
            assert len(lines) == list(withdrawn.values()).count(scope), (report.changes, withdrawn)
            assert all(line.endswith(f"(to bring the school back: microtrials accept {name})") for line in lines)
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
        self.files[name] = [row for b in unique for row in block_rows(school, b)]
        write_rows(self.folder / name, self.files[name])
        self.expect_load(name, load_file(self.con, self.folder / name, KEY))

    @rule(school=st.sampled_from(SCHOOLS))
    def deliver_unreadable(self, school: str) -> None:
        """A file rejected whole (no arm column): nothing changes."""
        name = f"{school}_{next(self.names)}.csv"
        (self.folder / name).write_text(f"school_urn,pupil_id,intervention,outcome_measure,outcome\n{school},X,Maths,PUMA,1\n")
        report = load_file(self.con, self.folder / name, KEY)
        assert report.status == "rejected" and report.changes == []

    @rule(data=st.data(), crlf=st.booleans(), score=st.sampled_from([None, None, "", "70", "118"]))
    def deliver_again(self, data, crlf: bool, score: str | None) -> None:
        """An earlier file under a new name: the very same bytes, or other bytes (saved again with CRLF
        line ends, and/or one pupil's outcome score given, blanked or changed)."""
        self.send_again(data, data.draw(st.sampled_from(sorted(self.files))), crlf, score)

    @precondition(lambda self: any(self.refused(n) for n in self.files))
    @rule(data=st.data(), crlf=st.booleans())
    def withdrawn_school_resends(self, data, crlf: bool) -> None:
        """A file with rows for a trial round its school was since withdrawn from, sent again under a new
        name: the very same bytes, or saved again with CRLF line ends."""
        self.send_again(data, self.draw_refused(data), crlf, None)

    @precondition(lambda self: any(self.refused(n) for n in self.files))
    @rule(data=st.data(), crlf=st.booleans(), score=st.sampled_from(["", "70", "118"]))
    def withdrawn_school_corrects_a_score(self, data, crlf: bool, score: str) -> None:
        """Such a file sent again with one pupil's outcome score given, blanked or changed."""
        self.send_again(data, self.draw_refused(data), crlf, score)

    def draw_refused(self, data) -> str:
        return data.draw(st.sampled_from(sorted(n for n in self.files if self.refused(n))))

    def send_again(self, data, earlier: str, crlf: bool, score: str | None) -> None:
        rows = [list(row) for row in self.files[earlier]]
        if score is not None:
            rows[data.draw(st.integers(0, len(rows) - 1))][5] = score
        name = f"{rows[0][0]}_{next(self.names)}.csv"
        self.files[name] = rows
        if crlf or score is not None:
            write_rows(self.folder / name, rows, crlf)
        else:
            shutil.copyfile(self.folder / earlier, self.folder / name)
        how = "changed bytes" if crlf or score is not None else "same bytes"
        event(f"sent again, {how}: {'of a withdrawn school' if self.refused(name) else 'plain'}")
        self.expect_load(name, load_file(self.con, self.folder / name, KEY))

    @rule(data=st.data())
    def load_again(self, data) -> None:
        """The same file in the folder at the next run: nothing changes (held stays held, and a withdrawn
        school's file stays unchanged)."""
        name = data.draw(st.sampled_from(sorted(self.files)))
        report = load_file(self.con, self.folder / name, KEY)
        assert report.status == ("unchanged" if self.status[name] == "loaded" else self.status[name])

    def refused(self, name: str) -> bool:
        """Whether the file carries rows for a key since withdrawn (any file of such rows is held)."""
        return any(self.withdrawn(k) for k in self.delivered(name))

    def acceptable(self, name: str) -> bool:
        """A held file, or one loaded (so applied) that carries rows for a key since withdrawn."""
        return self.status[name] != "loaded" or self.refused(name)

    @precondition(lambda self: any(self.acceptable(n) for n in self.status))
    @rule(data=st.data())
    def accept(self, data) -> None:
        """The officer accepts a held file, or a withdrawn school's file: what would be held now is
        applied, the rest left alone."""
        name = data.draw(st.sampled_from(sorted(n for n in self.status if self.acceptable(n))))
        event(f"accept: {'a held file' if self.status[name] != 'loaded' else 'a withdrawn school file left in place'}")
        report = accept_file(self.con, self.folder / name, KEY)
        held = {k: new for k, new in self.delivered(name).items() if self.would_hold(k, new)}
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
    @rule(data=st.data(), trial=st.sampled_from([None, "cafe", "maths"]))
    def withdraw_school(self, data, trial: str | None) -> None:
        """A school leaves (everything, or one trial given by an alias), mostly one with rows stored."""
        stored = sorted({k[0] for k, pupils in self.model.items() if pupils})
        school = data.draw(st.sampled_from(stored if data.draw(st.integers(0, 3)) else SCHOOLS))
        name = {None: None, "cafe": "CR", "maths": "maths"}[trial]
        done = withdraw(self.con, school, name)
        gone = [k for k in self.model if k[0] == school and self.model[k] and (trial is None or k[1] == trial)]
        assert len(done) == len(gone), ([c.message for c in done], gone)
        assert all(c.message.endswith(f"withdrawn, {c.pupils_before} pupil{'s' if c.pupils_before != 1 else ''} removed")
                   for c in done)
        event(f"withdraw: {'some rows' if gone else 'nothing to remove'}")
        for key in gone:
            del self.model[key]
            self.stored_when_withdrawn.add(key)
        if gone:  # nothing removed: nothing recorded, no later file held
            self.withdrawals[school, trial] = next(self.clock)
        self.recorded += len(gone)

    # ---- after every step --------------------------------------------------------------------------

    @invariant()
    def warehouse_holds_the_model(self) -> None:
        if not hasattr(self, "con"):
            return
        got = sorted(self.con.execute("SELECT school_urn, pupil_key, outcome FROM pupils").fetchall(), key=str)
        ids = [(key[0], pupil, score) for key, pupils in self.model.items() for pupil, score in pupils.items()]
        hashed = pseudonymise(pa.array([pupil for _, pupil, _ in ids], pa.string()), KEY).to_pylist()
        want = sorted(((school, h, float(score) if score else None) for (school, _, score), h in zip(ids, hashed)),
                      key=str)
        assert got == want
        per_key = self.con.execute("SELECT count(*) FROM change_sets").fetchone()[0]
        assert per_key == self.recorded  # every change set recorded once


# 140 sequences of 8 steps under the "ci" profile (CI; ~75 s, so the suite stays under its 15 minutes), 28 under "dev"
Deliveries.TestCase.settings = settings(max_examples=examples(140), stateful_step_count=8, deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])
TestDeliveries = pytest.mark.timeout(900)(pytest.mark.slow(Deliveries.TestCase))
