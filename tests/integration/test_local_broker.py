"""The local Service Bus broker, driven by the unmodified azure-servicebus SDK (sync and aio).

One broker serves the module on a free loopback port, with one SDK client whose senders and
non-session receivers live as long as the module (as the relay's would; opening and closing a
link costs the SDK about a second). Every test uses its own message and session ids and settles
what it receives; `receive_own` completes and skips anything an earlier test left behind. Waits
poll with deadlines; only tests about time passing sleep, with locks and TTLs of 1-2 seconds.
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from azure.servicebus import (
    NEXT_AVAILABLE_SESSION,
    AutoLockRenewer,
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusReceivedMessage,
    ServiceBusReceiver,
    ServiceBusSender,
    ServiceBusSubQueue,
)
from azure.servicebus._pyamqp.utils import generate_sas_token
from azure.servicebus.aio import ServiceBusClient as AsyncServiceBusClient
from azure.servicebus.exceptions import (
    MessageLockLostError,
    MessageSizeExceededError,
    MessagingEntityNotFoundError,
    OperationTimeoutError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    ServiceBusError,
    ServiceBusServerBusyError,
    SessionCannotBeLockedError,
)

from devstack.servicebus import LocalServiceBus, authz
from devstack.servicebus.__main__ import config_queues, iso_duration, queue_option
from writeback.transport.memory import QueueConfig

QUEUES = [
    QueueConfig(
        "requests",
        duplicate_detection_window=60,
        lock_duration=2,
        max_delivery_count=3,
        default_ttl=30,
    ),
    QueueConfig("outcomes", requires_session=True, default_ttl=30),
    QueueConfig("short", default_ttl=1, dead_letter_on_expiration=True),
    QueueConfig("heartbeats"),
]
DLQ = ServiceBusSubQueue.DEAD_LETTER
Send = Callable[..., None]
_counter = itertools.count()


def unique(prefix: str) -> str:
    """An id no other test (or run) uses."""
    return f"{prefix}-{next(_counter)}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def bus() -> Iterator[LocalServiceBus]:
    with LocalServiceBus(QUEUES) as running:
        yield running


@pytest.fixture(scope="module")
def client(bus: LocalServiceBus) -> Iterator[ServiceBusClient]:
    with ServiceBusClient.from_connection_string(bus.connection_string, retry_total=0) as sb:
        yield sb


@pytest.fixture(scope="module")
def send(client: ServiceBusClient) -> Iterator[Send]:
    """send(queue, *messages): one message alone, several as one batch, on shared senders."""
    senders: dict[str, ServiceBusSender] = {}

    def send_to(queue: str, *messages: ServiceBusMessage) -> None:
        sender = senders.setdefault(queue, client.get_queue_sender(queue))
        sender.send_messages(list(messages) if len(messages) > 1 else messages[0])

    yield send_to
    for sender in senders.values():
        sender.close()


@pytest.fixture(scope="module")
def receivers(client: ServiceBusClient) -> Iterator[dict[str, ServiceBusReceiver]]:
    """Shared peek-lock receivers: 'requests', 'heartbeats' and the DLQs of 'requests', 'short'."""
    opened = {
        "requests": client.get_queue_receiver("requests"),
        "heartbeats": client.get_queue_receiver("heartbeats"),
        "requests-dlq": client.get_queue_receiver("requests", sub_queue=DLQ),
        "short-dlq": client.get_queue_receiver("short", sub_queue=DLQ),
    }
    yield opened
    for receiver in opened.values():
        receiver.close()


def receive_own(
    receiver: ServiceBusReceiver, message_id: str, timeout: float = 10
) -> ServiceBusReceivedMessage:
    """Receive until the message with `message_id` arrives; complete others (earlier leftovers)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in receiver.receive_messages(max_message_count=1, max_wait_time=0.5):
            if message.message_id == message_id:
                return message
            receiver.complete_message(message)
    raise AssertionError(f"{message_id} was not received within {timeout} s")


def nothing_more(receiver: ServiceBusReceiver) -> bool:
    """Whether the receiver gets no message within half a second."""
    return receiver.receive_messages(max_message_count=1, max_wait_time=0.5) == []


class TestSendReceive:
    def test_properties_round_trip(
        self, send: Send, receivers: dict[str, ServiceBusReceiver]
    ) -> None:
        """Body, ids, reply-to, session reply-to, TTL and application properties arrive intact."""
        mid = unique("props")
        send(
            "requests",
            ServiceBusMessage(
                b"sealed",
                message_id=mid,
                reply_to="outcomes",
                reply_to_session_id=mid,
                correlation_id="corr-1",
                time_to_live=datetime.timedelta(seconds=20),
                application_properties={"domain": "corp.example.com", "n": 7},
                content_type="application/jose",
            ),
        )
        receiver = receivers["requests"]
        got = receive_own(receiver, mid)
        assert b"".join(got.body) == b"sealed"
        assert (got.reply_to, got.reply_to_session_id) == ("outcomes", mid)
        assert (got.correlation_id, got.content_type) == ("corr-1", "application/jose")
        assert got.time_to_live == datetime.timedelta(seconds=20)
        # The SDK (pyamqp) hands string keys and values back as bytes; the wire type is string.
        assert got.application_properties == {b"domain": b"corp.example.com", b"n": 7}
        assert got.delivery_count == 0
        assert got.sequence_number
        assert got.enqueued_time_utc is not None
        assert got.locked_until_utc is not None
        assert (got.locked_until_utc - got.enqueued_time_utc).total_seconds() >= 1.9
        receiver.complete_message(got)

    def test_batch_is_split_in_order(
        self, send: Send, receivers: dict[str, ServiceBusReceiver]
    ) -> None:
        """A list sent as one batch transfer arrives as separate messages, in order."""
        ids = [unique("batch") for _ in range(3)]
        send("heartbeats", *(ServiceBusMessage(i, message_id=i) for i in ids))
        receiver = receivers["heartbeats"]
        got = [receive_own(receiver, i) for i in ids]
        assert [str(m) for m in got] == ids
        assert [m.sequence_number for m in got] == sorted(m.sequence_number for m in got)
        for message in got:
            receiver.complete_message(message)

    def test_abandon_redelivers_with_count(
        self, send: Send, receivers: dict[str, ServiceBusReceiver]
    ) -> None:
        """An abandoned message is delivered again with delivery_count 1 (AMQP header semantics)."""
        mid = unique("abandon")
        send("requests", ServiceBusMessage("x", message_id=mid))
        receiver = receivers["requests"]
        receiver.abandon_message(receive_own(receiver, mid))
        again = receive_own(receiver, mid)
        assert again.delivery_count == 1
        receiver.complete_message(again)

    def test_duplicate_message_id_is_dropped(
        self, send: Send, receivers: dict[str, ServiceBusReceiver]
    ) -> None:
        """A second send with the same MessageId succeeds but delivers nothing."""
        mid = unique("dup")
        send("requests", ServiceBusMessage("first", message_id=mid))
        send("requests", ServiceBusMessage("second", message_id=mid))
        receiver = receivers["requests"]
        got = receive_own(receiver, mid)
        assert str(got) == "first"
        receiver.complete_message(got)
        assert nothing_more(receiver)

    def test_peek_does_not_lock(self, send: Send, client: ServiceBusClient) -> None:
        """peek_messages shows queued messages in order without locking them."""
        ids = [unique("peek") for _ in range(3)]
        for i in ids:
            send("heartbeats", ServiceBusMessage(i, message_id=i))
        with client.get_queue_receiver("heartbeats") as receiver:
            peeked = [
                m for m in receiver.peek_messages(max_message_count=50) if m.message_id in ids
            ]
            assert [m.message_id for m in peeked] == ids
            assert all(m.delivery_count == 0 for m in peeked)
            first = receive_own(receiver, ids[0])
            assert first.sequence_number == peeked[0].sequence_number
            receiver.complete_message(first)
            for i in ids[1:]:
                receiver.complete_message(receive_own(receiver, i))

    def test_unknown_queue_is_not_found(self, client: ServiceBusClient) -> None:
        """Attaching a sender or receiver to a missing queue raises MessagingEntityNotFoundError."""
        sender = client.get_queue_sender("no-such-queue")
        with pytest.raises(MessagingEntityNotFoundError):
            sender.send_messages(ServiceBusMessage("x"))
        sender.close()
        receiver = client.get_queue_receiver("no-such-queue")
        with pytest.raises(MessagingEntityNotFoundError):
            receiver.receive_messages(max_wait_time=1)
        receiver.close()

    def test_session_queue_refuses_a_message_without_session(self, send: Send) -> None:
        """Sending to a session queue without a SessionId fails at once with the reason."""
        with pytest.raises(ServiceBusError, match="requires a SessionId"):
            send("outcomes", ServiceBusMessage("no session"))

    def test_operations_not_emulated_fail_clearly(self, client: ServiceBusClient) -> None:
        """Scheduling is not emulated: the SDK gets a 501 answer, not a hang or a silent success."""
        with (
            client.get_queue_sender("heartbeats") as sender,
            pytest.raises(ServiceBusError, match="not emulated"),
        ):
            sender.schedule_messages(
                ServiceBusMessage("later"), datetime.datetime.now(datetime.UTC)
            )


class TestLocks:
    def test_lock_expiry_redelivers(
        self, send: Send, receivers: dict[str, ServiceBusReceiver]
    ) -> None:
        """An unsettled message comes back after its 2 s lock expires, with delivery_count 1."""
        mid = unique("expiry")
        send("requests", ServiceBusMessage("x", message_id=mid))
        receiver = receivers["requests"]
        first = receive_own(receiver, mid)
        again = receive_own(receiver, mid, timeout=6)
        assert again.delivery_count == 1
        with pytest.raises(MessageLockLostError):
            receiver.renew_message_lock(first)
        with pytest.raises(MessageLockLostError):
            receiver.complete_message(first)
        receiver.complete_message(again)

    def test_settling_a_lost_lock_is_refused_by_the_broker(
        self, send: Send, receivers: dict[str, ServiceBusReceiver], bus: LocalServiceBus
    ) -> None:
        """When the broker no longer holds a lock, settling it raises MessageLockLostError."""
        mid = unique("stolen")
        send("requests", ServiceBusMessage("x", message_id=mid))
        receiver = receivers["requests"]
        got = receive_own(receiver, mid)
        bus.broker.complete("requests", str(got.lock_token))  # the lock is gone broker-side
        with pytest.raises(MessageLockLostError):
            receiver.complete_message(got)

    def test_max_delivery_count_dead_letters(
        self, send: Send, receivers: dict[str, ServiceBusReceiver]
    ) -> None:
        """After three abandons the message is in the DLQ with reason MaxDeliveryCountExceeded."""
        mid = unique("poison")
        send("requests", ServiceBusMessage("x", message_id=mid))
        receiver = receivers["requests"]
        for count in range(3):
            got = receive_own(receiver, mid)
            assert got.delivery_count == count
            receiver.abandon_message(got)
        dead = receive_own(receivers["requests-dlq"], mid)
        assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"
        receivers["requests-dlq"].complete_message(dead)

    def test_explicit_dead_letter(
        self, send: Send, receivers: dict[str, ServiceBusReceiver]
    ) -> None:
        """dead_letter_message keeps reason, description and source, readable from the DLQ."""
        mid = unique("dead")
        send("requests", ServiceBusMessage("x", message_id=mid))
        receiver = receivers["requests"]
        receiver.dead_letter_message(
            receive_own(receiver, mid),
            reason="request.invalid_signature",
            error_description="the signature did not verify",
        )
        dead_letters = receivers["requests-dlq"]
        peeked = dead_letters.peek_messages(max_message_count=50, sequence_number=1)
        assert [m.dead_letter_reason for m in peeked if m.message_id == mid] == [
            "request.invalid_signature"
        ]
        got = receive_own(dead_letters, mid)
        assert got.dead_letter_reason == "request.invalid_signature"
        assert got.dead_letter_error_description == "the signature did not verify"
        assert got.dead_letter_source == "requests"
        dead_letters.complete_message(got)

    def test_renew_message_lock_extends(
        self, send: Send, receivers: dict[str, ServiceBusReceiver]
    ) -> None:
        """renew_message_lock moves the lock past its original expiry, and the broker honours it."""
        mid = unique("renew")
        send("requests", ServiceBusMessage("x", message_id=mid))
        receiver = receivers["requests"]
        got = receive_own(receiver, mid)
        original = got.locked_until_utc
        assert original is not None
        time.sleep(1)  # the lock lasts 2 s: renew in its second half
        renewed = receiver.renew_message_lock(got)
        assert (renewed - original).total_seconds() >= 0.9
        time.sleep(1.2)  # past the original expiry, before the renewed one
        receiver.complete_message(got)

    def test_auto_lock_renewer_keeps_the_lock(
        self, send: Send, receivers: dict[str, ServiceBusReceiver]
    ) -> None:
        """AutoLockRenewer keeps a message locked past its 2 s lock duration."""
        mid = unique("autorenew")
        send("requests", ServiceBusMessage("x", message_id=mid))
        receiver = receivers["requests"]
        renewer = AutoLockRenewer(max_lock_renewal_duration=20)
        try:
            got = receive_own(receiver, mid)
            renewer.register(receiver, got)
            time.sleep(2.5)  # longer than the lock duration
            receiver.complete_message(got)
            assert got.auto_renew_error is None
        finally:
            renewer.close()


class TestTimeToLive:
    def test_expired_message_goes_to_dead_letter(
        self, send: Send, client: ServiceBusClient, receivers: dict[str, ServiceBusReceiver]
    ) -> None:
        """On 'short' (1 s TTL, dead-letter on expiry) a message expires unseen into the DLQ."""
        mid = unique("ttl")
        send("short", ServiceBusMessage("late", message_id=mid))
        got = receive_own(receivers["short-dlq"], mid, timeout=5)
        assert got.dead_letter_reason == "TTLExpiredException"
        receivers["short-dlq"].complete_message(got)
        with client.get_queue_receiver("short") as receiver:
            assert nothing_more(receiver)


class TestSessions:
    def test_named_session_receives_only_its_messages(
        self, send: Send, client: ServiceBusClient
    ) -> None:
        """A receiver on a session sees only that session's messages, and knows the session id."""
        mine, other = unique("s"), unique("s")
        send("outcomes", ServiceBusMessage("other", session_id=other, message_id=other))
        send("outcomes", ServiceBusMessage("mine", session_id=mine, message_id=mine))
        with client.get_queue_receiver("outcomes", session_id=mine) as receiver:
            assert receiver.session.session_id == mine
            got = receive_own(receiver, mine)
            assert got.session_id == mine
            receiver.complete_message(got)
            assert nothing_more(receiver)
        with client.get_queue_receiver("outcomes", session_id=other) as receiver:
            receiver.complete_message(receive_own(receiver, other))

    def test_next_available_session(self, send: Send, client: ServiceBusClient) -> None:
        """NEXT_AVAILABLE_SESSION locks a session that has messages and reports its id."""
        sid = unique("next")
        send("outcomes", ServiceBusMessage("x", session_id=sid, message_id=sid))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with client.get_queue_receiver(
                "outcomes", session_id=NEXT_AVAILABLE_SESSION, max_wait_time=2
            ) as receiver:
                for message in receiver.receive_messages(max_message_count=10, max_wait_time=1):
                    receiver.complete_message(message)  # older leftovers are cleaned up too
                    if message.session_id == sid:
                        assert receiver.session.session_id == sid
                        return
        raise AssertionError("the next available session was never the new one")

    def test_next_available_times_out(self, client: ServiceBusClient, bus: LocalServiceBus) -> None:
        """With no session available, a next-available receiver fails with OperationTimeoutError."""
        owner = object()
        held: list[str] = []
        while locked := bus.broker.lock_session("outcomes", None, owner):
            held.append(locked[0])  # hold every session that still has messages
        receiver = client.get_queue_receiver(
            "outcomes", session_id=NEXT_AVAILABLE_SESSION, max_wait_time=1
        )
        started = time.monotonic()
        try:
            with pytest.raises(OperationTimeoutError):
                receiver.receive_messages(max_message_count=1, max_wait_time=1)
            assert time.monotonic() - started < 5
        finally:
            receiver.close()
            for session_id in held:
                bus.broker.release_session("outcomes", session_id, owner)

    def test_second_receiver_on_locked_session_refused(self, client: ServiceBusClient) -> None:
        """While one receiver holds a session, another receiver on it is refused."""
        sid = unique("locked")
        with client.get_queue_receiver("outcomes", session_id=sid) as first:
            assert nothing_more(first)
            second = client.get_queue_receiver("outcomes", session_id=sid)
            # The wait bounds the SDK's link open too, which takes it about half a second.
            with pytest.raises(SessionCannotBeLockedError):
                second.receive_messages(max_message_count=1, max_wait_time=3)
            second.close()

    def test_session_state_and_lock_renewal(self, client: ServiceBusClient) -> None:
        """Session state is stored per session and renewing the session lock extends it."""
        sid = unique("state")
        with client.get_queue_receiver("outcomes", session_id=sid) as receiver:
            assert receiver.session.get_state() is None
            receiver.session.set_state(b"step-2")
            assert receiver.session.get_state() == b"step-2"
            before = receiver.session.locked_until_utc
            assert before is not None
            time.sleep(0.05)  # so that the renewed expiry is measurably later
            assert receiver.session.renew_lock() > before

    def test_unsettled_session_messages_return_when_the_receiver_closes(
        self, send: Send, client: ServiceBusClient
    ) -> None:
        """Closing a session receiver releases the session; its unsettled message comes back
        with its delivery count unchanged (Service Bus raises it only on lock expiry)."""
        sid = unique("release")
        send("outcomes", ServiceBusMessage("x", session_id=sid, message_id=sid))
        with client.get_queue_receiver("outcomes", session_id=sid) as receiver:
            receive_own(receiver, sid)
        with client.get_queue_receiver("outcomes", session_id=sid) as receiver:
            again = receive_own(receiver, sid)
            assert again.delivery_count == 0
            receiver.complete_message(again)


class TestAsync:
    @pytest.mark.asyncio
    async def test_send_receive_abandon_complete(self, bus: LocalServiceBus) -> None:
        """The aio client sends, receives, abandons and completes like the sync one."""
        mid = unique("aio")
        async with AsyncServiceBusClient.from_connection_string(bus.connection_string) as sb:
            async with sb.get_queue_sender("requests") as sender:
                await sender.send_messages(ServiceBusMessage("x", message_id=mid))
            async with sb.get_queue_receiver("requests") as receiver:
                seen: list[int | None] = []
                deadline = time.monotonic() + 10
                while len(seen) < 2 and time.monotonic() < deadline:
                    for message in await receiver.receive_messages(max_wait_time=0.5):
                        if message.message_id != mid:
                            await receiver.complete_message(message)
                            continue
                        seen.append(message.delivery_count)
                        if len(seen) == 1:
                            await receiver.abandon_message(message)
                        else:
                            await receiver.complete_message(message)
        assert seen == [0, 1]

    @pytest.mark.asyncio
    async def test_concurrent_session_waiters_get_only_their_reply(
        self, bus: LocalServiceBus
    ) -> None:
        """Twenty aio waiters, each on its own session, each receive exactly their own reply."""
        sessions = [unique("waiter") for _ in range(20)]
        async with AsyncServiceBusClient.from_connection_string(bus.connection_string) as sb:

            async def wait_for(sid: str) -> list[tuple[str | None, str]]:
                async with sb.get_queue_receiver("outcomes", session_id=sid) as receiver:
                    deadline = time.monotonic() + 15
                    while time.monotonic() < deadline:
                        got = await receiver.receive_messages(max_wait_time=1)
                        for message in got:
                            await receiver.complete_message(message)
                        if got:
                            return [(m.session_id, str(m)) for m in got]
                return []

            waiters = [asyncio.create_task(wait_for(sid)) for sid in sessions]
            await asyncio.sleep(0)  # let the waiters start attaching before the replies exist
            async with sb.get_queue_sender("outcomes") as sender:
                for sid in reversed(sessions):
                    await sender.send_messages(
                        ServiceBusMessage(f"outcome for {sid}", session_id=sid, correlation_id=sid)
                    )
            results = await asyncio.gather(*waiters)
        assert results == [[(sid, f"outcome for {sid}")] for sid in sessions]


def broker_threads(threads: Iterable[threading.Thread] | None = None) -> set[threading.Thread]:
    """The event-loop threads of local brokers among `threads` (default: all running)."""
    pool = threading.enumerate() if threads is None else threads
    return {t for t in pool if t.name.startswith("local-servicebus")}


class TestLifecycle:
    # pyamqp (azure-servicebus 7.15.0) does not close its socket when the peer is gone before
    # the client is closed, and this test stops the broker under a connected client on purpose.
    @pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
    )
    def test_stop_leaves_no_thread_or_listener(self) -> None:
        """Stopping the broker under a connected client ends its thread and closes its port."""
        before = set(threading.enumerate())
        bus = LocalServiceBus([QueueConfig("q")])
        bus.start()
        port = bus.port
        assert port != 0
        sb = ServiceBusClient.from_connection_string(bus.connection_string, retry_total=0)
        receiver = sb.get_queue_receiver("q")
        try:
            with sb.get_queue_sender("q") as sender:
                sender.send_messages(ServiceBusMessage("x"))
            assert len(receiver.receive_messages(max_message_count=1, max_wait_time=2)) == 1
            bus.stop()  # while the client is still connected
            assert broker_threads() <= broker_threads(before)
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), 1).close()
        finally:
            bus.stop()
            receiver.close()
            sb.close()
            del receiver, sb
            gc.collect()  # finalise the SDK's socket inside this test, under its filter
        deadline = time.monotonic() + 10  # the SDK's keep-alive threads end once it is closed
        while set(threading.enumerate()) - before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(threading.enumerate()) <= before


class TestCommandLine:
    def test_queue_options_and_emulator_config(self) -> None:
        """--queue options and the official emulator's Config.json both become QueueConfigs."""
        assert queue_option("req:dedup=600,lock=30,max-delivery=5,ttl=120") == QueueConfig(
            "req",
            duplicate_detection_window=600,
            lock_duration=30,
            max_delivery_count=5,
            default_ttl=120,
        )
        assert queue_option("out:session,dlq-on-expiry") == QueueConfig(
            "out", requires_session=True, dead_letter_on_expiration=True
        )
        assert iso_duration("PT1M") == 60
        assert iso_duration("P1DT0.5S") == 86400.5
        emulator = {
            "UserConfig": {
                "Namespaces": [
                    {
                        "Name": "sbemulatorns",
                        "Queues": [
                            {
                                "Name": "writeback-outcomes",
                                "Properties": {
                                    "DeadLetteringOnMessageExpiration": True,
                                    "DefaultMessageTimeToLive": "PT5M",
                                    "DuplicateDetectionHistoryTimeWindow": "PT20S",
                                    "LockDuration": "PT1M",
                                    "MaxDeliveryCount": 3,
                                    "RequiresDuplicateDetection": False,
                                    "RequiresSession": True,
                                },
                            }
                        ],
                    }
                ]
            }
        }
        assert config_queues(emulator) == [
            QueueConfig(
                "writeback-outcomes",
                requires_session=True,
                lock_duration=60,
                max_delivery_count=3,
                default_ttl=300,
                dead_letter_on_expiration=True,
            )
        ]

    def test_runs_in_the_foreground_until_sigterm(self, tmp_path: Path) -> None:
        """The command prints its connection string, serves, and exits 0 on SIGTERM."""
        config = tmp_path / "queues.json"
        config.write_text(json.dumps({"queues": [{"name": "cli", "requires_session": False}]}))
        root = Path(__file__).resolve().parents[2]
        process = subprocess.Popen(
            [sys.executable, "-m", "devstack.servicebus", "--port", "0", "--config", str(config)],
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert process.stdout is not None
            connection_string = process.stdout.readline().strip()  # printed once accepting
            assert connection_string.startswith("Endpoint=sb://127.0.0.1:")
            with ServiceBusClient.from_connection_string(connection_string) as sb:
                with sb.get_queue_sender("cli") as sender:
                    sender.send_messages(ServiceBusMessage("x"))
                with sb.get_queue_receiver("cli") as receiver:
                    (got,) = receiver.receive_messages(max_wait_time=5)
                    receiver.complete_message(got)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()


@pytest.fixture(scope="module")
def guarded() -> Iterator[LocalServiceBus]:
    """A broker with one more key: `sender`, with Send on `requests` only."""
    policy = authz.root_policy().with_key("sender", "sender-key", {"requests": {"Send"}})
    with LocalServiceBus(QUEUES, policy=policy) as running:
        yield running


class TestAuthorisation:
    """Tokens are judged and rights are checked per queue, as Service Bus does."""

    def test_a_right_on_one_queue_allows_only_that(self, guarded: LocalServiceBus) -> None:
        """A key with Send on one queue may send there, but not receive there or send elsewhere."""
        cs = guarded.connection_string_for("sender")
        with ServiceBusClient.from_connection_string(cs, retry_total=0) as sb:
            with sb.get_queue_sender("requests") as sender:
                sender.send_messages(ServiceBusMessage("allowed"))
            with pytest.raises(ServiceBusAuthorizationError), sb.get_queue_sender("heartbeats"):
                pass
            with pytest.raises(ServiceBusAuthorizationError), sb.get_queue_receiver("requests"):
                pass

    def test_a_wrong_key_is_refused(self, guarded: LocalServiceBus) -> None:
        """A signature made with a key the broker does not know for that name is refused."""
        cs = guarded.connection_string_for("sender").replace("sender-key", "guessed")
        sb = ServiceBusClient.from_connection_string(cs, retry_total=0)
        with sb, pytest.raises(ServiceBusAuthenticationError), sb.get_queue_sender("requests"):
            pass

    def test_an_expired_token_is_refused(self, guarded: LocalServiceBus) -> None:
        """A shared access signature whose expiry has passed on the broker's clock is refused."""
        expired = generate_sas_token(
            f"sb://{guarded.host}:{guarded.port}/requests",
            "sender",
            "sender-key",
            int(time.time()) - 10,
        )
        cs = f"Endpoint=sb://{guarded.host}:{guarded.port};SharedAccessSignature={expired};"
        cs += "UseDevelopmentEmulator=true;"
        sb = ServiceBusClient.from_connection_string(cs, retry_total=0)
        with sb, pytest.raises(ServiceBusAuthenticationError), sb.get_queue_sender("requests"):
            pass


class TestAzureLimits:
    def test_a_message_over_256_kb_is_refused(self, send: Send) -> None:
        """A message bigger than Service Bus Standard's 256 KB is refused."""
        with pytest.raises(MessageSizeExceededError):
            send("heartbeats", ServiceBusMessage(b"x" * 300 * 1024))

    def test_application_properties_over_64_kb_are_refused(self, send: Send) -> None:
        """Headers (application properties) over 64 KB are refused, though the message fits."""
        properties = {f"p{i}": "v" * 1000 for i in range(70)}
        with pytest.raises(MessageSizeExceededError):
            send("heartbeats", ServiceBusMessage("x", application_properties=properties))

    def test_a_dead_letter_reason_over_4096_characters_is_refused(
        self, send: Send, client: ServiceBusClient, bus: LocalServiceBus
    ) -> None:
        """Dead-lettering with a description over 4,096 characters fails; nothing is moved."""
        mid = unique("long-reason")
        send("requests", ServiceBusMessage("x", message_id=mid))
        with client.get_queue_receiver("requests") as receiver:
            got = receive_own(receiver, mid)
            dead_before = bus.broker.stats("requests")["dead_lettered"]
            with pytest.raises(ServiceBusError):
                receiver.dead_letter_message(got, "r", "d" * 5000)
        assert bus.broker.stats("requests")["dead_lettered"] == dead_before


class TestFaults:
    """The fault switches do what Service Bus does."""

    def test_server_busy_is_raised_as_throttling(
        self, bus: LocalServiceBus, client: ServiceBusClient
    ) -> None:
        """While busy, an operation fails with `com.microsoft:server-busy`; then it works."""
        bus.faults.busy(1)
        with pytest.raises(ServiceBusServerBusyError), client.get_queue_sender("heartbeats"):
            pass
        with client.get_queue_sender("heartbeats") as sender:
            sender.send_messages(ServiceBusMessage("after"))

    def test_a_forced_detach_loses_the_link_but_not_the_lock(self) -> None:
        """A forced detach ends a receiver's link; its message's lock stays valid and can be
        settled by lock token from a new receiver (the management link)."""
        with (
            LocalServiceBus(QUEUES) as own,
            ServiceBusClient.from_connection_string(own.connection_string) as sb,
        ):
            with sb.get_queue_sender("requests") as sender:
                sender.send_messages(ServiceBusMessage("x", message_id="detached"))
            with sb.get_queue_receiver("requests") as first:
                got = receive_own(first, "detached")
                own.detach("requests")
                with sb.get_queue_receiver("requests") as second:
                    second._settle_message_via_mgmt_link("completed", [got.lock_token])
            assert own.broker.stats("requests") == {
                "active": 0,
                "locked": 0,
                "dead_lettered": 0,
                "scheduled": 0,
            }

    def test_the_clock_offset_moves_locked_until(
        self, bus: LocalServiceBus, client: ServiceBusClient, send: Send
    ) -> None:
        """With the broker's clock 60 s ahead, a message's locked-until is 60 s later."""
        mid = unique("skew")
        bus.faults.clock_offset = 60
        try:
            send("requests", ServiceBusMessage("x", message_id=mid))
            with client.get_queue_receiver("requests") as receiver:
                got = receive_own(receiver, mid)
                assert got.locked_until_utc is not None
                ahead = got.locked_until_utc.timestamp() - time.time()
                assert 60 < ahead <= 62, ahead
                receiver.complete_message(got)
        finally:
            bus.faults.clock_offset = 0
