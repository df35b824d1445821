"""The in-memory Service Bus queue model: ordering, peek-lock, delivery counts, dead-lettering,
time-to-live, duplicate detection and sessions, with a clock the tests move by hand."""

from __future__ import annotations

import itertools
import threading

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from writeback.transport.memory import (
    MemoryBroker,
    MessageLockLost,
    QueueConfig,
    SessionCannotBeLocked,
    SessionLockLost,
    StoredMessage,
    UnknownQueue,
)

_ids = itertools.count(1)


def unique_id(prefix: str = "m") -> str:
    """A message id no other test uses."""
    return f"{prefix}-{next(_ids)}"


class FakeClock:
    """Wall-clock seconds that move only when a test says so."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def broker(clock: FakeClock) -> MemoryBroker:
    return MemoryBroker(
        [
            QueueConfig("requests", lock_duration=10, max_delivery_count=3),
            QueueConfig("dedup", duplicate_detection_window=60),
            QueueConfig("expiring", default_ttl=30),
            QueueConfig("expiring-dlq", default_ttl=30, dead_letter_on_expiration=True),
            QueueConfig("outcomes", requires_session=True, lock_duration=20),
        ],
        clock=clock,
    )


def message(body: bytes = b"body", **fields: object) -> StoredMessage:
    fields.setdefault("message_id", unique_id())
    return StoredMessage(body, **fields)  # type: ignore[arg-type]


class TestOrderAndPeekLock:
    def test_messages_are_received_in_send_order(self, broker: MemoryBroker) -> None:
        """Messages leave a queue in the order they were sent, with rising sequence numbers."""
        for body in (b"1", b"2", b"3"):
            broker.send("requests", message(body))
        received = broker.receive("requests", 3)
        assert [m.body for m in received] == [b"1", b"2", b"3"]
        assert [m.sequence_number for m in received] == [1, 2, 3]

    def test_receive_locks_and_complete_removes(
        self, broker: MemoryBroker, clock: FakeClock
    ) -> None:
        """A received message is locked for the lock duration, hidden, and gone once completed."""
        broker.send("requests", message())
        (got,) = broker.receive("requests")
        assert got.lock_token is not None
        assert got.locked_until == clock.now + 10
        assert broker.receive("requests") == []
        assert broker.stats("requests") == {
            "active": 0,
            "locked": 1,
            "dead_lettered": 0,
            "scheduled": 0,
        }
        broker.complete("requests", got.lock_token)
        assert broker.stats("requests")["locked"] == 0
        assert broker.peek("requests", 10) == []

    def test_settling_twice_loses_the_lock(self, broker: MemoryBroker) -> None:
        """A lock token is good for one settlement only."""
        broker.send("requests", message())
        (got,) = broker.receive("requests")
        assert got.lock_token is not None
        broker.complete("requests", got.lock_token)
        with pytest.raises(MessageLockLost):
            broker.complete("requests", got.lock_token)

    def test_peek_does_not_lock(self, broker: MemoryBroker) -> None:
        """Peeking shows messages (locked ones too) from a sequence number on, without locking."""
        for body in (b"1", b"2", b"3"):
            broker.send("requests", message(body))
        broker.receive("requests")
        peeked = broker.peek("requests", 10, from_sequence=2)
        assert [m.body for m in peeked] == [b"2", b"3"]
        assert all(m.lock_token is None for m in peeked)
        assert [m.body for m in broker.peek("requests", 1)] == [b"1"]

    def test_unknown_queue_is_refused(self, broker: MemoryBroker) -> None:
        """Sending to or receiving from a queue that does not exist raises UnknownQueue."""
        with pytest.raises(UnknownQueue):
            broker.send("nope", message())
        with pytest.raises(UnknownQueue):
            broker.receive("nope/$DeadLetterQueue")

    def test_queue_names_are_case_insensitive(self, broker: MemoryBroker) -> None:
        """Entity names match regardless of case, as in Service Bus, and so does the DLQ suffix."""
        assert broker.queue("REQUESTS").name == "requests"
        assert broker.queue("requests/$deadletterqueue").name == "requests/$DeadLetterQueue"


class TestAbandonAndLockExpiry:
    def test_abandon_counts_and_redelivers_in_place(self, broker: MemoryBroker) -> None:
        """An abandoned message comes back first, ahead of later ones, with delivery_count + 1."""
        broker.send("requests", message(b"first"))
        broker.send("requests", message(b"second"))
        (first,) = broker.receive("requests")
        assert first.delivery_count == 0
        assert first.lock_token is not None
        broker.abandon("requests", first.lock_token)
        again = broker.receive("requests", 2)
        assert [(m.body, m.delivery_count) for m in again] == [(b"first", 1), (b"second", 0)]

    def test_release_does_not_count(self, broker: MemoryBroker) -> None:
        """A released message (never handed to the application) keeps its delivery count."""
        broker.send("requests", message())
        (got,) = broker.receive("requests")
        assert got.lock_token is not None
        broker.release("requests", got.lock_token)
        (again,) = broker.receive("requests")
        assert again.delivery_count == 0

    def test_lock_expiry_redelivers_with_a_higher_count(
        self, broker: MemoryBroker, clock: FakeClock
    ) -> None:
        """When a lock expires, tick makes the message available again with delivery_count + 1."""
        broker.send("requests", message())
        (got,) = broker.receive("requests")
        assert got.lock_token is not None
        assert broker.tick() == got.locked_until
        clock.advance(10)
        broker.tick()
        (again,) = broker.receive("requests")
        assert again.delivery_count == 1
        assert again.lock_token != got.lock_token
        with pytest.raises(MessageLockLost):
            broker.complete("requests", got.lock_token)

    def test_max_delivery_count_dead_letters(self, broker: MemoryBroker) -> None:
        """After max_delivery_count failed deliveries the message is in the DLQ with the reason."""
        broker.send("requests", message(b"poison"))
        for _ in range(3):
            (got,) = broker.receive("requests")
            assert got.lock_token is not None
            broker.abandon("requests", got.lock_token)
        assert broker.receive("requests") == []
        (dead,) = broker.receive("requests/$DeadLetterQueue")
        assert dead.body == b"poison"
        assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"
        assert dead.delivery_count == 3
        assert broker.stats("requests")["dead_lettered"] == 1

    def test_renew_lock_extends_and_fails_after_expiry(
        self, broker: MemoryBroker, clock: FakeClock
    ) -> None:
        """Renewing extends a lock from now; after it expired, renewing raises MessageLockLost."""
        broker.send("requests", message())
        (got,) = broker.receive("requests")
        assert got.lock_token is not None
        clock.advance(8)
        assert broker.renew_lock("requests", got.lock_token) == clock.now + 10
        clock.advance(8)
        assert broker.receive("requests") == []
        clock.advance(3)
        with pytest.raises(MessageLockLost):
            broker.renew_lock("requests", got.lock_token)


class TestDeadLetter:
    def test_explicit_dead_letter_keeps_reason_and_description(self, broker: MemoryBroker) -> None:
        """A dead-lettered message is readable from '<q>/$DeadLetterQueue' with both fields."""
        broker.send("requests", message(b"bad", application_properties={"k": "v"}))
        (got,) = broker.receive("requests")
        assert got.lock_token is not None
        broker.dead_letter(
            "requests", got.lock_token, "request.invalid", "signature did not verify"
        )
        (peeked,) = broker.peek("requests/$DeadLetterQueue")
        assert peeked.dead_letter_reason == "request.invalid"
        assert peeked.dead_letter_description == "signature did not verify"
        (dead,) = broker.receive("requests/$deadletterqueue")
        assert (dead.body, dead.application_properties) == (b"bad", {"k": "v"})
        assert dead.lock_token is not None
        broker.complete("requests/$DeadLetterQueue", dead.lock_token)
        assert broker.stats("requests")["dead_lettered"] == 0

    def test_dead_letter_queue_takes_no_sends(self, broker: MemoryBroker) -> None:
        """Nobody sends to a dead-letter sub-queue directly."""
        with pytest.raises(ValueError, match="dead-letter"):
            broker.send("requests/$DeadLetterQueue", message())


class TestTimeToLive:
    def test_queue_default_ttl_drops_expired(self, broker: MemoryBroker, clock: FakeClock) -> None:
        """Without dead-lettering on expiration, an expired message is simply gone."""
        broker.send("expiring", message())
        clock.advance(30)
        assert broker.tick() is None
        assert broker.receive("expiring") == []
        assert broker.stats("expiring") == {
            "active": 0,
            "locked": 0,
            "dead_lettered": 0,
            "scheduled": 0,
        }

    def test_expired_message_goes_to_dlq_when_configured(
        self, broker: MemoryBroker, clock: FakeClock
    ) -> None:
        """With dead_letter_on_expiration, an expired message is dead-lettered as TTLExpired."""
        broker.send("expiring-dlq", message(b"late"))
        clock.advance(31)
        broker.tick()
        (dead,) = broker.peek("expiring-dlq/$DeadLetterQueue")
        assert (dead.body, dead.dead_letter_reason) == (b"late", "TTLExpiredException")
        assert dead.expires_at is None

    def test_smaller_ttl_wins(self, broker: MemoryBroker, clock: FakeClock) -> None:
        """A message's own TTL applies when shorter than the queue default, and not when longer."""
        broker.send("expiring", message(b"short", ttl=5))
        broker.send("expiring", message(b"long", ttl=500))
        assert [m.expires_at for m in broker.peek("expiring", 2)] == [clock.now + 5, clock.now + 30]
        clock.advance(5)
        assert [m.body for m in broker.peek("expiring", 2)] == [b"long"]

    def test_expired_message_is_never_received(
        self, broker: MemoryBroker, clock: FakeClock
    ) -> None:
        """Receive never hands out an expired message, even when nobody called tick."""
        broker.send("requests", message(ttl=1))
        clock.advance(1)
        assert broker.receive("requests") == []

    def test_locked_message_expires_only_after_its_lock(
        self, broker: MemoryBroker, clock: FakeClock
    ) -> None:
        """A message whose TTL passes while locked can still be completed; abandoned, it expires."""
        broker.send("requests", message(ttl=5))
        broker.send("requests", message(ttl=5))
        first, second = broker.receive("requests", 2)
        assert first.lock_token is not None
        assert second.lock_token is not None
        clock.advance(6)
        broker.complete("requests", first.lock_token)
        broker.abandon("requests", second.lock_token)
        assert broker.peek("requests", 10) == []


class TestDuplicateDetection:
    def test_duplicate_message_id_dropped_within_window(
        self, broker: MemoryBroker, clock: FakeClock
    ) -> None:
        """A second send with the same MessageId inside the window succeeds but is dropped."""
        mid = unique_id()
        assert broker.send("dedup", message(b"1", message_id=mid)) is True
        clock.advance(59)
        assert broker.send("dedup", message(b"2", message_id=mid)) is False
        assert [m.body for m in broker.peek("dedup", 10)] == [b"1"]

    def test_same_message_id_accepted_after_window(
        self, broker: MemoryBroker, clock: FakeClock
    ) -> None:
        """Once the window has passed the same MessageId is accepted again."""
        mid = unique_id()
        broker.send("dedup", message(b"1", message_id=mid))
        clock.advance(60)
        assert broker.send("dedup", message(b"2", message_id=mid)) is True
        assert len(broker.peek("dedup", 10)) == 2

    def test_no_detection_without_window(self, broker: MemoryBroker) -> None:
        """Queues without duplicate detection accept repeated MessageIds."""
        mid = unique_id()
        assert broker.send("requests", message(message_id=mid))
        assert broker.send("requests", message(message_id=mid))


class TestSessions:
    def test_session_queue_requires_session_id(self, broker: MemoryBroker) -> None:
        """A message without a session id is refused by a session queue."""
        with pytest.raises(ValueError, match="session"):
            broker.send("outcomes", message())

    def test_receive_only_own_session(self, broker: MemoryBroker) -> None:
        """A session receiver gets only the messages of its session, in order."""
        broker.send("outcomes", message(b"a1", session_id="a"))
        broker.send("outcomes", message(b"b1", session_id="b"))
        broker.send("outcomes", message(b"a2", session_id="a"))
        owner = object()
        assert broker.lock_session("outcomes", "a", owner) is not None
        got = broker.receive("outcomes", 10, session_id="a", owner=owner)
        assert [m.body for m in got] == [b"a1", b"a2"]

    def test_named_lock_on_empty_session(self, broker: MemoryBroker, clock: FakeClock) -> None:
        """A named session can be locked before it has messages, and then receives them."""
        owner = object()
        assert broker.lock_session("outcomes", "later", owner) == ("later", clock.now + 20)
        assert broker.receive("outcomes", session_id="later", owner=owner) == []
        broker.send("outcomes", message(b"reply", session_id="later"))
        (got,) = broker.receive("outcomes", session_id="later", owner=owner)
        assert got.body == b"reply"

    def test_second_owner_refused(self, broker: MemoryBroker) -> None:
        """A session held by one receiver cannot be locked or read by another."""
        first, second = object(), object()
        broker.lock_session("outcomes", "s", first)
        with pytest.raises(SessionCannotBeLocked):
            broker.lock_session("outcomes", "s", second)
        with pytest.raises(SessionLockLost):
            broker.receive("outcomes", session_id="s", owner=second)

    def test_next_available_picks_a_session_with_messages(self, broker: MemoryBroker) -> None:
        """Next-available skips locked sessions; None when no free session has messages."""
        owner, other = object(), object()
        assert broker.lock_session("outcomes", None, owner) is None
        broker.lock_session("outcomes", "empty", other)
        broker.send("outcomes", message(session_id="busy"))
        broker.send("outcomes", message(session_id="free"))
        broker.lock_session("outcomes", "busy", other)
        locked = broker.lock_session("outcomes", None, owner)
        assert locked is not None
        assert locked[0] == "free"
        assert broker.lock_session("outcomes", None, object()) is None

    def test_release_returns_locked_messages(self, broker: MemoryBroker) -> None:
        """Releasing a session (its receiver closed) makes its locked messages available again
        with their delivery count unchanged, as Service Bus does."""
        broker.send("outcomes", message(b"x", session_id="s"))
        owner = object()
        broker.lock_session("outcomes", "s", owner)
        broker.receive("outcomes", session_id="s", owner=owner)
        broker.release_session("outcomes", "s", owner)
        other = object()
        broker.lock_session("outcomes", "s", other)
        (again,) = broker.receive("outcomes", session_id="s", owner=other)
        assert (again.body, again.delivery_count) == (b"x", 0)

    def test_session_lock_expiry_counts_a_failed_delivery(
        self, broker: MemoryBroker, clock: FakeClock
    ) -> None:
        """A session lock that expires returns its locked messages with delivery_count + 1."""
        broker.send("outcomes", message(b"x", session_id="s"))
        counts = []
        for _ in range(3):
            owner = object()
            broker.lock_session("outcomes", "s", owner)
            got = broker.receive("outcomes", session_id="s", owner=owner)
            counts += [m.delivery_count for m in got]
            clock.advance(21)
            broker.tick()
        assert counts == [0, 1, 2]

    def test_session_lock_expires_and_renews(self, broker: MemoryBroker, clock: FakeClock) -> None:
        """A session lock lasts lock_duration unless renewed; its messages follow it."""
        broker.send("outcomes", message(session_id="s"))
        owner = object()
        broker.lock_session("outcomes", "s", owner)
        (got,) = broker.receive("outcomes", session_id="s", owner=owner)
        clock.advance(15)
        assert broker.renew_session("outcomes", "s", owner) == clock.now + 20
        assert broker.session_locked_until("outcomes", "s", owner) == clock.now + 20
        clock.advance(15)
        assert got.lock_token is not None
        broker.complete("outcomes", got.lock_token)
        clock.advance(20)
        broker.tick()
        with pytest.raises(SessionLockLost):
            broker.renew_session("outcomes", "s", owner)
        assert broker.lock_session("outcomes", "s", object()) is not None

    def test_session_state_is_kept_per_session(self, broker: MemoryBroker) -> None:
        """Session state is stored per session and cleared with None."""
        broker.set_session_state("outcomes", "s", b"state")
        assert broker.get_session_state("outcomes", "s") == b"state"
        assert broker.get_session_state("outcomes", "t") is None
        broker.set_session_state("outcomes", "s", None)
        assert broker.get_session_state("outcomes", "s") is None


class TestNotification:
    def test_changed_condition_wakes_a_waiter(self, broker: MemoryBroker) -> None:
        """A thread waiting on `changed` wakes when a message is sent."""
        waiting, woke = threading.Event(), threading.Event()

        def waiter() -> None:
            with broker.changed:
                waiting.set()  # send() cannot take the lock until wait() below releases it
                if broker.changed.wait(timeout=10):
                    woke.set()

        thread = threading.Thread(target=waiter)
        thread.start()
        assert waiting.wait(10)
        broker.send("requests", message())
        thread.join(10)
        assert woke.is_set()

    def test_listeners_are_called_after_changes(self, broker: MemoryBroker) -> None:
        """Listeners hear about sends and settlements, and stop hearing once removed."""
        calls: list[int] = []

        def listener() -> None:
            calls.append(1)

        broker.add_listener(listener)
        broker.send("requests", message())
        (got,) = broker.receive("requests")
        assert got.lock_token is not None
        broker.abandon("requests", got.lock_token)
        assert len(calls) == 2
        broker.remove_listener(listener)
        broker.send("requests", message())
        assert len(calls) == 2


class ScanCountingBroker(MemoryBroker):
    """Counts the full scans that apply the passing of time."""

    scans = 0

    def _apply_time(self, now: float) -> bool:
        self.scans += 1
        return super()._apply_time(now)


class TestLongQueues:
    def test_time_is_applied_only_when_something_is_due(self, clock: FakeClock) -> None:
        """Operations on a long queue do not rescan it until a lock, expiry or duplicate id
        is due, and then one scan applies it."""
        broker = ScanCountingBroker(
            [QueueConfig("q", lock_duration=10, default_ttl=300, duplicate_detection_window=600)],
            clock=clock,
        )
        for _ in range(200):
            broker.send("q", message())
        for _ in range(100):
            (taken,) = broker.receive("q")
            broker.complete("q", str(taken.lock_token))
        assert broker.scans == 0
        clock.advance(11)  # the completed messages' locks were due: one scan, nothing changes
        broker.peek("q")
        broker.peek("q")
        assert broker.scans == 1
        assert broker.stats("q")["active"] == 100
        clock.advance(300)  # the rest expire
        assert broker.receive("q") == []
        assert broker.stats("q")["active"] == 0


class QueueModel(RuleBasedStateMachine):
    """Random interleavings of send, receive, complete, abandon and time passing."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.broker = MemoryBroker(
            [
                QueueConfig(
                    "q",
                    lock_duration=5,
                    max_delivery_count=3,
                    default_ttl=40,
                    dead_letter_on_expiration=True,
                ),
                QueueConfig("d", lock_duration=5, max_delivery_count=2, default_ttl=25),
            ],
            clock=self.clock,
        )
        self.sent: dict[str, tuple[str, float]] = {}  # id -> (queue, expires at)
        self.held: dict[str, tuple[str, str, float]] = {}  # id -> (queue, token, locked until)
        self.completed: set[str] = set()

    @rule(queue=st.sampled_from(["q", "d"]), ttl=st.one_of(st.none(), st.integers(1, 60)))
    def send(self, queue: str, ttl: int | None) -> None:
        mid = unique_id("p")
        default = 40 if queue == "q" else 25
        assert self.broker.send(queue, StoredMessage(b"x", message_id=mid, ttl=ttl))
        self.sent[mid] = (queue, self.clock.now + min(ttl or default, default))

    @rule(
        queue=st.sampled_from(["q", "d", "q/$DeadLetterQueue", "d/$DeadLetterQueue"]),
        count=st.integers(1, 3),
    )
    def receive(self, queue: str, count: int) -> None:
        now = self.clock.now
        for got in self.broker.receive(queue, count):
            assert got.message_id is not None
            assert got.lock_token is not None
            held = self.held.get(got.message_id)
            assert held is None or held[2] <= now, "delivered while locked"
            self.held[got.message_id] = (queue, got.lock_token, now + 5)

    @rule(data=st.data(), settle=st.sampled_from(["complete", "abandon"]))
    def settle(self, data: st.DataObject, settle: str) -> None:
        if not self.held:
            return
        mid = data.draw(st.sampled_from(sorted(self.held)))
        queue, token, locked_until = self.held.pop(mid)
        try:
            getattr(self.broker, settle)(queue, token)
        except MessageLockLost:
            assert locked_until <= self.clock.now
            return
        assert locked_until > self.clock.now
        if settle == "complete":
            self.completed.add(mid)

    @rule(seconds=st.sampled_from([0.5, 2, 5, 30]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.broker.tick()

    @invariant()
    def every_message_is_in_exactly_one_place(self) -> None:
        places: dict[str, str] = {}
        for name in ("q", "d", "q/$DeadLetterQueue", "d/$DeadLetterQueue"):
            for stored in self.broker.peek(name, 10_000):
                assert stored.message_id not in places, "message in two places"
                assert stored.message_id is not None
                places[stored.message_id] = name
        assert not (set(places) & self.completed)
        for mid, (queue, expires_at) in self.sent.items():
            if mid in self.completed:
                continue
            if mid not in places:
                assert queue == "d", "message lost"  # only 'd' drops expired messages
                assert expires_at <= self.clock.now, "message lost before it expired"
            elif places[mid] == queue and expires_at <= self.clock.now:
                locked = [m for m in self.broker.peek(queue, 10_000) if m.message_id == mid]
                assert locked, "expired but still queued"
                assert locked[0].lock_token is not None, "expired but still queued"

    @invariant()
    def counts_add_up(self) -> None:
        for name in ("q", "d"):
            stats = self.broker.stats(name)
            peeked = self.broker.peek(name, 10_000)
            assert stats["active"] + stats["locked"] == len(peeked)
            assert stats["locked"] == sum(m.lock_token is not None for m in peeked)


TestQueueModel = QueueModel.TestCase
TestQueueModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
