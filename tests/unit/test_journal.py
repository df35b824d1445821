"""The relay's journal: duplicates get the recorded outcome, replays are refused, old ids pruned.

Everything here runs against a real SQLite file under tmp_path; the clock is injected so expiry
and pruning are exact.
"""

from __future__ import annotations

import shutil
import sqlite3
import stat
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from writeback.errors import ConfigurationError, JournalError, ProtocolError
from writeback.relay import journal as journal_module
from writeback.relay.journal import SCHEMA_VERSION, InvalidTransition, Journal, State

T0 = 1_800_000_000.0
WINDOW = 3600.0


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "journal.sqlite3"


@pytest.fixture
def journal(path: Path, clock: FakeClock) -> Iterator[Journal]:
    journal = Journal(path, replay_window=WINDOW, clock=clock)
    yield journal
    journal.close()


def begin(journal: Journal, request_id: str, expires_in: float = 300.0) -> object:
    now = journal._clock()  # the journal's own clock, fake or real
    return journal.begin(
        request_id,
        domain="corp.example",
        operation="reset",
        user="alice@corp.example",
        expires_at=now + expires_in,
    )


def outcome(status: str = "applied", reason: str = "applied") -> dict[str, object]:
    return {
        "status": status,
        "reason": reason,
        "message": "Done.",
        "detail": {"dc": "dc1"},
        "elapsedMs": 12,
    }


class TestBegin:
    def test_new_id_then_duplicate(self, journal: Journal, clock: FakeClock) -> None:
        """A new id returns None; the same id again returns its recorded Entry, unchanged."""
        assert begin(journal, "req-1") is None
        clock.now += 5
        entry = journal.begin(
            "req-1", domain="other", operation="change", user="mallory", expires_at=T0 + 10
        )
        assert entry is not None
        assert entry.state is State.RECEIVED
        assert (entry.domain, entry.operation, entry.user) == (
            "corp.example",
            "reset",
            "alice@corp.example",
        )
        assert entry.received_at == entry.updated_at == T0
        assert entry.expires_at == T0 + 300
        assert entry.outcome is None
        assert not entry.final

    def test_expired_is_refused(self, journal: Journal) -> None:
        """A new id whose expiry has passed (or is now) is refused as request.expired."""
        for expires_in in (-1.0, 0.0):
            with pytest.raises(ProtocolError) as caught:
                begin(journal, "req-old", expires_in=expires_in)
            assert caught.value.reason == "request.expired"
        assert journal.get("req-old") is None

    def test_expiry_beyond_the_window_is_refused(self, journal: Journal) -> None:
        """A new id expiring further ahead than the replay window is refused as malformed."""
        with pytest.raises(ProtocolError) as caught:
            begin(journal, "req-far", expires_in=WINDOW + 1)
        assert (caught.value.reason, caught.value.field) == ("request.malformed", "expiresAt")
        assert journal.get("req-far") is None
        assert begin(journal, "req-edge", expires_in=WINDOW) is None

    def test_non_finite_expiry_is_refused(self, journal: Journal) -> None:
        """NaN or infinite expiry is malformed, not silently accepted by failed comparisons."""
        for expires_at in (float("nan"), float("inf")):
            with pytest.raises(ProtocolError) as caught:
                journal.begin("req-nan", domain="d", operation="o", user="u", expires_at=expires_at)
            assert caught.value.field == "expiresAt"

    def test_duplicate_after_expiry_gets_the_recorded_entry(
        self, journal: Journal, clock: FakeClock
    ) -> None:
        """A late duplicate of a finished id returns its recorded outcome, not a new 'expired'."""
        begin(journal, "req-late")
        journal.finish("req-late", outcome())
        clock.now += 1000
        entry = begin(journal, "req-late", expires_in=-700)
        assert entry == journal.get("req-late")

    @pytest.mark.parametrize(
        "request_id", ["", "a b", "x" * 129, "tab\there", "é", "new\nline", "nul\x00"]
    )
    def test_malformed_id_is_refused(self, journal: Journal, request_id: str) -> None:
        """Ids must be 1..128 printable ASCII characters without spaces."""
        with pytest.raises(ProtocolError) as caught:
            begin(journal, request_id)
        assert (caught.value.reason, caught.value.field) == ("request.malformed", "id")

    def test_longest_id_is_accepted(self, journal: Journal) -> None:
        """A 128-character id of printable ASCII is accepted."""
        assert begin(journal, "~" * 64 + "0" * 64) is None


class TestLifecycle:
    def test_received_applying_applied(self, journal: Journal, clock: FakeClock) -> None:
        """RECEIVED -> APPLYING -> APPLIED, with the outcome round-tripped exactly."""
        begin(journal, "req-1")
        clock.now += 1
        journal.applying("req-1")
        applying = journal.get("req-1")
        assert applying is not None
        assert (applying.state, applying.updated_at, applying.outcome) == (
            State.APPLYING,
            T0 + 1,
            None,
        )
        clock.now += 1
        finished = journal.finish("req-1", outcome())
        assert finished.state is State.APPLIED
        assert finished.final
        assert finished.outcome == outcome()
        assert finished.updated_at == T0 + 2
        assert finished.received_at == T0
        assert journal.get("req-1") == finished

    def test_received_straight_to_rejected(self, journal: Journal) -> None:
        """A request refused before any directory write finishes from RECEIVED."""
        begin(journal, "req-2")
        entry = journal.finish("req-2", outcome("rejected", "user.out_of_scope"))
        assert entry.state is State.REJECTED
        assert entry.outcome is not None
        assert entry.outcome["reason"] == "user.out_of_scope"

    def test_outcome_is_read_only(self, journal: Journal) -> None:
        """The recorded outcome handed back cannot be edited in place."""
        begin(journal, "req-ro")
        entry = journal.finish("req-ro", outcome("failed", "directory.unavailable"))
        assert entry.outcome is not None
        with pytest.raises(TypeError):
            entry.outcome["status"] = "applied"  # type: ignore[index]

    def test_finish_twice_is_refused(self, journal: Journal) -> None:
        """A recorded outcome is never overwritten, even by an identical one."""
        begin(journal, "req-1")
        journal.finish("req-1", outcome("failed", "directory.unavailable"))
        for second in (outcome(), outcome("failed", "directory.unavailable")):
            with pytest.raises(InvalidTransition) as caught:
                journal.finish("req-1", second)
            assert caught.value.state is State.FAILED
        entry = journal.get("req-1")
        assert entry is not None
        assert entry.outcome == outcome("failed", "directory.unavailable")

    def test_applying_twice_is_refused(self, journal: Journal) -> None:
        """An entry already APPLYING may have changed the password, so it is never re-marked."""
        begin(journal, "req-1")
        journal.applying("req-1")
        with pytest.raises(InvalidTransition) as caught:
            journal.applying("req-1")
        assert caught.value.state is State.APPLYING

    def test_applying_a_final_entry_is_refused(self, journal: Journal) -> None:
        """A final entry cannot go back to APPLYING."""
        begin(journal, "req-1")
        journal.finish("req-1", outcome())
        with pytest.raises(InvalidTransition):
            journal.applying("req-1")
        entry = journal.get("req-1")
        assert entry is not None
        assert entry.state is State.APPLIED

    def test_unknown_id_is_refused(self, journal: Journal) -> None:
        """applying() and finish() on an id never begun raise, naming no state."""
        with pytest.raises(InvalidTransition) as caught:
            journal.applying("nobody")
        assert caught.value.state is None
        with pytest.raises(InvalidTransition):
            journal.finish("nobody", outcome())
        assert journal.get("nobody") is None

    @pytest.mark.parametrize("status", [None, "received", "applying", "APPLIED", "ok", 1])
    def test_outcome_needs_a_final_status(self, journal: Journal, status: object) -> None:
        """finish() accepts only applied, rejected or failed as the outcome's status."""
        begin(journal, "req-1")
        with pytest.raises(ValueError, match="status"):
            journal.finish("req-1", {"status": status, "reason": "x"})
        entry = journal.get("req-1")
        assert entry is not None
        assert entry.state is State.RECEIVED

    def test_outcome_must_be_json(self, journal: Journal) -> None:
        """An outcome that cannot be stored as JSON is refused and the entry left unfinished."""
        begin(journal, "req-1")
        with pytest.raises(ValueError, match="JSON"):
            journal.finish("req-1", {"status": "applied", "detail": object()})
        with pytest.raises(ValueError, match="JSON"):
            journal.finish("req-1", {"status": "applied", "elapsed": float("nan")})
        entry = journal.get("req-1")
        assert entry is not None
        assert entry.state is State.RECEIVED


class TestQueries:
    def test_unfinished_lists_received_and_applying(
        self, journal: Journal, clock: FakeClock
    ) -> None:
        """unfinished() returns RECEIVED and APPLYING entries, oldest first, and nothing final."""
        for request_id in ("a", "b", "c", "d"):
            begin(journal, request_id)
            clock.now += 1
        journal.applying("b")
        journal.finish("c", outcome())
        journal.applying("d")
        journal.finish("d", outcome("failed", "directory.unavailable"))
        unfinished = journal.unfinished()
        assert [(e.request_id, e.state) for e in unfinished] == [
            ("a", State.RECEIVED),
            ("b", State.APPLYING),
        ]

    def test_counts(self, journal: Journal) -> None:
        """counts() names every state, with 0 for those that have no entry."""
        assert journal.counts() == dict.fromkeys(State, 0)
        for request_id in ("a", "b", "c", "d", "e"):
            begin(journal, request_id)
        journal.applying("b")
        journal.finish("c", outcome())
        journal.finish("d", outcome())
        journal.finish("e", outcome("rejected", "policy.length"))
        assert journal.counts() == {
            "received": 1,
            "applying": 1,
            "applied": 2,
            "rejected": 1,
            "failed": 0,
        }


class TestPrune:
    def test_removes_only_old_final_entries(self, journal: Journal, clock: FakeClock) -> None:
        """prune() deletes final entries received more than the window ago, and counts them."""
        begin(journal, "old-applied")
        journal.finish("old-applied", outcome())
        begin(journal, "old-rejected")
        journal.finish("old-rejected", outcome("rejected", "policy.length"))
        clock.now += WINDOW / 2
        begin(journal, "recent")
        journal.finish("recent", outcome())
        assert journal.prune() == 0
        clock.now = T0 + WINDOW + 1
        assert journal.prune() == 2
        assert journal.get("old-applied") is None
        assert journal.get("old-rejected") is None
        assert journal.get("recent") is not None
        assert journal.prune() == 0

    def test_keeps_unfinished_entries(self, journal: Journal, clock: FakeClock) -> None:
        """An entry a crash left APPLYING survives pruning: it may mean a password was written."""
        begin(journal, "crashed")
        journal.applying("crashed")
        clock.now += 10 * WINDOW
        assert journal.prune() == 0
        assert [e.request_id for e in journal.unfinished()] == ["crashed"]

    def test_pruned_id_cannot_be_replayed(self, journal: Journal, clock: FakeClock) -> None:
        """Once an id is pruned its original expiry has passed, so a replay is refused."""
        begin(journal, "req-1", expires_in=WINDOW)
        journal.finish("req-1", outcome())
        clock.now = T0 + WINDOW + 1
        assert journal.prune() == 1
        with pytest.raises(ProtocolError) as caught:
            journal.begin("req-1", domain="d", operation="o", user="u", expires_at=T0 + WINDOW)
        assert caught.value.reason == "request.expired"

    def test_shorter_window_never_frees_a_valid_id(self, path: Path, clock: FakeClock) -> None:
        """Reopening with a smaller window keeps entries whose expiry has not yet passed."""
        with Journal(path, replay_window=WINDOW, clock=clock) as wide:
            begin(wide, "req-1", expires_in=WINDOW)
            wide.finish("req-1", outcome())
        clock.now += 120
        with Journal(path, replay_window=60, clock=clock) as narrow:
            assert narrow.prune() == 0
            assert narrow.get("req-1") is not None


class TestFile:
    def test_created_owner_only_with_its_directory(self, journal: Journal, path: Path) -> None:
        """The journal and its directory are created, the file with mode 0600."""
        begin(journal, "req-1")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        wal = path.with_name(path.name + "-wal")
        assert stat.S_IMODE(wal.stat().st_mode) == 0o600

    def test_refuses_a_file_others_can_read(self, path: Path) -> None:
        """A journal file with mode 0644 is refused, and its mode left as the owner set it."""
        Journal(path).close()
        path.chmod(0o644)
        with pytest.raises(ConfigurationError) as caught:
            Journal(path)
        assert caught.value.setting == "relay.journal"
        assert "readable by others" in caught.value.problem
        assert stat.S_IMODE(path.stat().st_mode) == 0o644

    def test_refuses_a_loose_wal_file(self, path: Path) -> None:
        """A leftover -wal file readable by others is refused like the database itself."""
        Journal(path).close()
        wal = path.with_name(path.name + "-wal")
        wal.touch(mode=0o644)
        wal.chmod(0o644)
        with pytest.raises(ConfigurationError, match="-wal"):
            Journal(path)

    def test_refuses_what_is_not_a_database(self, path: Path) -> None:
        """A file that is not SQLite is a configuration error, not a crash later."""
        path.parent.mkdir(mode=0o700)
        path.write_bytes(b"this is not a database, just some bytes" * 100)
        path.chmod(0o600)
        with pytest.raises(ConfigurationError) as caught:
            Journal(path)
        assert caught.value.setting == "relay.journal"

    def test_refuses_an_uncreatable_path(self, tmp_path: Path) -> None:
        """A journal path under a regular file cannot be created and says so."""
        blocker = tmp_path / "file"
        blocker.write_text("x")
        with pytest.raises(ConfigurationError, match="cannot create"):
            Journal(blocker / "journal.sqlite3")

    def test_a_journal_from_before_account_guids_is_read_and_upgraded(self, path: Path) -> None:
        """A version-1 file (no account column) opens: its APPLYING entry comes back with no
        account (recovered by its name, as then), and new entries record the account's GUID."""
        path.parent.mkdir(mode=0o700)
        with sqlite3.connect(path) as raw:
            for statement in journal_module._MIGRATIONS[0]:
                raw.execute(statement)
            raw.execute(
                "INSERT INTO requests VALUES ('old-1', 'applying', 'corp.example.test', 'reset',"
                " 'alice@corp.example.test', 1.0, 1.0, 9e9, NULL)"
            )
            raw.execute("PRAGMA user_version = 1")
        raw.close()
        path.chmod(0o600)
        with Journal(path) as upgraded:
            old = upgraded.get("old-1")
            assert old is not None
            assert (old.state, old.user, old.account) == (
                State.APPLYING,
                "alice@corp.example.test",
                None,
            )
            assert begin(upgraded, "new-1") is None
            upgraded.applying("new-1", "3f2504e0-4f89-41d3-9a0c-0305e82c3301")
            new = upgraded.get("new-1")
            assert new is not None
            assert new.account == "3f2504e0-4f89-41d3-9a0c-0305e82c3301"

    def test_refuses_a_newer_schema(self, path: Path) -> None:
        """A file written by a newer relay (higher user_version) is refused, not downgraded."""
        Journal(path).close()
        with sqlite3.connect(path) as raw:
            raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        raw.close()
        with pytest.raises(ConfigurationError, match="newer"):
            Journal(path)

    def test_schema_version_and_wal_are_persistent(self, journal: Journal, path: Path) -> None:
        """The file records its schema version and WAL journaling, seen from another connection."""
        raw = sqlite3.connect(path)
        try:
            assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            raw.close()

    def test_synchronous_is_full(self, journal: Journal) -> None:
        """A new journal's connection fsyncs every commit (synchronous=FULL is 2)."""
        # Per-connection setting, so it can only be read through the journal's own connection.
        assert journal._db.execute("PRAGMA synchronous").fetchone()[0] == 2

    def test_only_the_received_insert_skips_the_fsync(self, journal: Journal) -> None:
        """begin commits with synchronous=NORMAL (1); applying and finish commit with FULL (2),
        so the APPLYING mark and every outcome are on disk before the relay acts on them."""
        levels: list[tuple[str, int]] = []

        def trace(statement: str) -> None:
            if statement == "COMMIT":
                # A trace callback may not use its own connection: PRAGMA synchronous was set
                # right before BEGIN, so the last one traced is the level of this commit.
                levels.append(("commit", levels[-1][1] if levels else -1))
            elif statement.startswith("PRAGMA synchronous="):
                level = {"NORMAL": 1, "FULL": 2}[statement.split("=", 1)[1]]
                levels.append(("set", level))

        journal._db.set_trace_callback(trace)
        begin(journal, "req-1")
        journal.applying("req-1")
        journal.finish("req-1", {"status": "applied", "reason": "applied"})
        begin(journal, "req-2")
        journal.finish("req-2", {"status": "rejected", "reason": "policy.length"})
        journal._db.set_trace_callback(None)
        assert [level for kind, level in levels if kind == "commit"] == [1, 2, 2, 1, 2]

    def test_reopen_keeps_everything(self, path: Path, clock: FakeClock) -> None:
        """Closing and reopening the journal keeps every entry, state and outcome."""
        with Journal(path, clock=clock) as first:
            begin(first, "a")
            begin(first, "b")
            first.applying("b")
            begin(first, "c")
            before = {rid: first.get(rid) for rid in "ab"}
            before["c"] = first.finish("c", outcome("rejected", "policy.history"))
        with Journal(path, clock=clock) as second:
            assert {rid: second.get(rid) for rid in "abc"} == before
            assert second.counts()["applying"] == 1
            assert begin(second, "c") == before["c"]

    def test_close_twice_is_harmless(self, path: Path) -> None:
        """close() may be called more than once."""
        journal = Journal(path)
        journal.close()
        journal.close()

    def test_rejects_a_nonsense_window(self, path: Path) -> None:
        """The replay window must be a positive, finite number of seconds."""
        for window in (0.0, -1.0, float("inf"), float("nan")):
            with pytest.raises(ValueError, match="replay_window"):
                Journal(path, replay_window=window)


class TestConcurrency:
    IDS: ClassVar[list[str]] = [f"req-{n:03d}" for n in range(50)]

    def _race(self, journals: list[Journal]) -> Counter[str]:
        """Each journal gets a thread calling begin() on every id; count who saw each as new."""
        start = threading.Barrier(len(journals))
        new: Counter[str] = Counter()
        guard = threading.Lock()
        errors: list[BaseException] = []

        def work(journal: Journal) -> None:
            try:
                start.wait()
                for request_id in self.IDS:
                    if begin(journal, request_id) is None:
                        with guard:
                            new[request_id] += 1
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(j,)) for j in journals]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors
        return new

    def test_threads_sharing_one_journal(self, path: Path) -> None:
        """Eight threads on one Journal: every id is new for exactly one of them."""
        with Journal(path) as journal:
            new = self._race([journal] * 8)
            assert sum(new.values()) == 50
            assert set(new.values()) == {1}
            assert journal.counts()["received"] == 50

    def test_separate_connections_on_one_file(self, path: Path) -> None:
        """Four Journals on one file (as separate processes would be): still one 'new' per id."""
        journals = [Journal(path) for _ in range(4)]
        try:
            new = self._race(journals)
        finally:
            for journal in journals:
                journal.close()
        assert sum(new.values()) == 50
        assert set(new.values()) == {1}


REQUEST_IDS = st.sampled_from(["r1", "r2", "r3"])
STATUSES = st.sampled_from(["applied", "rejected", "failed"])


class JournalMachine(RuleBasedStateMachine):
    """Any interleaving of begin/applying/finish keeps each id's outcome and final state fixed."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="journal-"))
        self.clock = FakeClock()
        self.journal = Journal(self.directory / "j.sqlite3", clock=self.clock)
        self.model: dict[str, State] = {}
        self.outcomes: dict[str, object] = {}

    @rule(request_id=REQUEST_IDS)
    def begin(self, request_id: str) -> None:
        self.clock.now += 1
        entry = begin(self.journal, request_id)
        if request_id in self.model:
            assert entry is not None
            assert entry.state is self.model[request_id]
        else:
            assert entry is None
            self.model[request_id] = State.RECEIVED

    @rule(request_id=REQUEST_IDS)
    def applying(self, request_id: str) -> None:
        self.clock.now += 1
        if self.model.get(request_id) is State.RECEIVED:
            self.journal.applying(request_id)
            self.model[request_id] = State.APPLYING
        else:
            with pytest.raises(InvalidTransition):
                self.journal.applying(request_id)

    @rule(request_id=REQUEST_IDS, status=STATUSES, n=st.integers(0, 9))
    def finish(self, request_id: str, status: str, n: int) -> None:
        self.clock.now += 1
        recorded = {"status": status, "reason": status, "detail": {"n": n}}
        if self.model.get(request_id) in (State.RECEIVED, State.APPLYING):
            entry = self.journal.finish(request_id, recorded)
            assert entry.outcome == recorded
            self.model[request_id] = State(status)
            self.outcomes[request_id] = recorded
        else:
            with pytest.raises(InvalidTransition):
                self.journal.finish(request_id, recorded)

    @invariant()
    def matches_the_model(self) -> None:
        for request_id in ("r1", "r2", "r3"):
            entry = self.journal.get(request_id)
            if request_id not in self.model:
                assert entry is None
                continue
            assert entry is not None
            assert entry.state is self.model[request_id]
            assert entry.outcome == self.outcomes.get(request_id)
            assert entry.final == (request_id in self.outcomes)

    def teardown(self) -> None:
        self.journal.close()
        shutil.rmtree(self.directory)


TestJournalMachine = JournalMachine.TestCase
TestJournalMachine.settings = settings(max_examples=50, stateful_step_count=20, deadline=None)
TestJournalMachine.__doc__ = "The journal never moves a final entry nor records two outcomes."


class TestErrors:
    def test_database_failures_become_journal_errors(self, path: Path, clock: FakeClock) -> None:
        """A failing database raises JournalError (apply nothing), never a raw sqlite3 error."""
        journal = Journal(path, replay_window=WINDOW, clock=clock)
        journal.close()
        with pytest.raises(JournalError, match="journal"):
            journal.get("req-1")
        with pytest.raises(JournalError):
            begin(journal, "req-1")

    def test_invalid_transition_is_a_journal_error(self, journal: Journal) -> None:
        """An illegal transition is part of the JournalError family the relay handles."""
        with pytest.raises(JournalError):
            journal.applying("never-begun")
