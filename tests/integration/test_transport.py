"""One contract for every transport: in-process, the SDK on the local broker, a live namespace.

The same tests run against `InProcessCloud`/`InProcessRelay` (the queue model in this process),
against `ServiceBusCloud`/`ServiceBusRelay` with the unmodified azure-servicebus SDK talking AMQP
to the local broker, and against a real Service Bus namespace when
`WRITEBACK_LIVE_SERVICEBUS_CONNECTION_STRING` is set (its queues must exist as infra/ declares them,
for the domain in `WRITEBACK_LIVE_SERVICEBUS_DOMAIN`). Request/reply is the request-response
pattern with one reply session per cloud instance (see `writeback.transport`).

Lock duration and maximum delivery count are the deployed queue's: the local broker's queue
configuration, or on a live namespace the queue's properties (read with the management client
when the connection string may, else infra/'s values), so the live leg runs unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from azure.core.exceptions import AzureError
from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.management import ServiceBusAdministrationClient

from devstack.servicebus import LocalServiceBus, writeback_queues
from devstack.servicebus.authz import CLOUD_KEY_NAME, RELAY_KEY_NAME, writeback_policy
from writeback.errors import TransportError, TransportLockLost
from writeback.transport import (
    HEARTBEATS_QUEUE,
    OUTCOMES_QUEUE,
    CloudTransport,
    RelayTransport,
    requests_queue,
)
from writeback.transport.inprocess import InProcessCloud, InProcessRelay
from writeback.transport.memory import MemoryBroker, QueueConfig, StoredMessage
from writeback.transport.replies import Backoff
from writeback.transport.servicebus import ServiceBusCloud, ServiceBusRelay
from writeback.transport.servicebus.clock import read_service_clock
from writeback.transport.settings import ServiceBusSettings

DOMAIN = os.environ.get("WRITEBACK_LIVE_SERVICEBUS_DOMAIN", "corp.example.test")
LIVE = os.environ.get("WRITEBACK_LIVE_SERVICEBUS_CONNECTION_STRING")
LOCK_SECONDS = 2.0  # the local queues' (short, so lock expiry is quick to test)
MAX_DELIVERIES = 3
# What infra/bicep/modules/servicebus.bicep deploys: lockDuration PT30S, maxDeliveryCount 5.
INFRA_LOCK_SECONDS = 30.0
INFRA_MAX_DELIVERIES = 5


def queues() -> list[QueueConfig]:
    """The entities infra/ declares, with short locks so lock expiry is quick to test."""
    return writeback_queues([DOMAIN], lock_duration=LOCK_SECONDS, max_delivery_count=MAX_DELIVERIES)


@dataclass
class Backend:
    """How to build both sides of one transport, and to look into and write to its queues."""

    name: str
    cloud: Callable[[], CloudTransport]
    relay: Callable[[], RelayTransport]
    drain: Callable[[str], Any]  # async: queue -> [(body, dead-letter reason, description)]
    # async: (queue, body, session id, correlation id): a message no transport of ours would send
    send_raw: Callable[[str, str | bytes, str, str | None], Any]
    lock_seconds: float  # the request queue's lock duration, as deployed
    max_deliveries: int  # its maximum delivery count, as deployed

    async def dead_letters(self, queue: str) -> list[tuple[str, str | None, str | None]]:
        return list(await self.drain(f"{queue}/$DeadLetterQueue"))


@pytest.fixture(scope="module")
def local_bus() -> Iterator[LocalServiceBus]:
    """The local broker with the rights infra/ grants: the cloud and the relay each connect
    with their own key, so a missing role fails here as it would in Azure."""
    with LocalServiceBus(queues(), policy=writeback_policy([DOMAIN])) as bus:
        yield bus


def local_backend(bus: LocalServiceBus, *, identities: bool = True) -> Backend:
    """Both sides on the local broker, each with its own identity's key (or the root key)."""
    deployed = bus.broker.queue(requests_queue(DOMAIN))
    return sdk_backend(
        "servicebus-local",
        bus.connection_string,
        (deployed.lock_duration, deployed.max_delivery_count),
        cloud=bus.connection_string_for(CLOUD_KEY_NAME) if identities else None,
        relay=bus.connection_string_for(RELAY_KEY_NAME) if identities else None,
    )


def live_queue_settings(connection_string: str) -> tuple[float, int]:
    """The live request queue's lock duration and maximum delivery count: its properties
    when the connection string may read them (Manage), else what infra/ deploys."""
    try:
        with ServiceBusAdministrationClient.from_connection_string(connection_string) as admin:
            queue = admin.get_queue(requests_queue(DOMAIN))
    except AzureError:
        return INFRA_LOCK_SECONDS, INFRA_MAX_DELIVERIES
    lock = queue.lock_duration
    return (
        lock.total_seconds() if lock else INFRA_LOCK_SECONDS,
        queue.max_delivery_count or INFRA_MAX_DELIVERIES,
    )


def text(message: ServiceBusReceivedMessage) -> str:
    """A received body as text (bytes that are not UTF-8 with replacement characters)."""
    try:
        return str(message)
    except UnicodeDecodeError:
        return b"".join(message.body).decode(errors="replace")


def sdk_backend(
    name: str,
    connection_string: str,
    deployed: tuple[float, int],
    cloud: str | None = None,
    relay: str | None = None,
) -> Backend:
    """The SDK transport; `connection_string` (every right) drains and sends stray messages,
    `cloud` and `relay` (default: the same) are the two sides' own; `deployed` is the request
    queue's (lock duration, maximum delivery count)."""
    lock_seconds, max_deliveries = deployed
    cloud_settings = ServiceBusSettings(connection_string=cloud or connection_string)
    relay_settings = ServiceBusSettings(
        connection_string=relay or connection_string, lock_duration=lock_seconds
    )

    async def drain(queue: str) -> list[tuple[str, str | None, str | None]]:
        name, _, sub_queue = queue.partition("/")
        async with ServiceBusClient.from_connection_string(connection_string) as client:
            receiver = client.get_queue_receiver(
                name,
                sub_queue=ServiceBusSubQueue.DEAD_LETTER if sub_queue else None,
                max_wait_time=2,
            )
            async with receiver:
                found = await receiver.receive_messages(max_message_count=50, max_wait_time=2)
                for message in found:
                    await receiver.complete_message(message)
        return [(text(m), m.dead_letter_reason, m.dead_letter_error_description) for m in found]

    async def send_raw(
        queue: str, body: str | bytes, session: str, correlation: str | None
    ) -> None:
        client = ServiceBusClient.from_connection_string(connection_string)
        async with client, client.get_queue_sender(queue) as sender:
            await sender.send_messages(
                ServiceBusMessage(body, session_id=session, correlation_id=correlation)
            )

    return Backend(
        name,
        lambda: ServiceBusCloud(cloud_settings, None),
        lambda: ServiceBusRelay(relay_settings, None, DOMAIN),
        drain,
        send_raw,
        lock_seconds,
        max_deliveries,
    )


def inprocess_backend(configs: list[QueueConfig] | None = None) -> Backend:
    broker = MemoryBroker(configs or queues())

    async def drain(queue: str) -> list[tuple[str, str | None, str | None]]:
        broker.tick()
        found = broker.receive(queue, 50)
        for message in found:
            broker.complete(queue, str(message.lock_token))
        return [
            (m.body.decode(errors="replace"), m.dead_letter_reason, m.dead_letter_description)
            for m in found
        ]

    async def send_raw(
        queue: str, body: str | bytes, session: str, correlation: str | None
    ) -> None:
        raw = body.encode() if isinstance(body, str) else body
        broker.send(queue, StoredMessage(raw, session_id=session, correlation_id=correlation))

    deployed = broker.queue(requests_queue(DOMAIN))
    return Backend(
        "inprocess",
        lambda: InProcessCloud(broker),
        lambda: InProcessRelay(broker, DOMAIN),
        drain,
        send_raw,
        deployed.lock_duration,
        deployed.max_delivery_count,
    )


@pytest.fixture(params=["inprocess", "servicebus-local", "servicebus-live"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "inprocess":
        return inprocess_backend()
    if request.param == "servicebus-local":
        bus: LocalServiceBus = request.getfixturevalue("local_bus")
        return local_backend(bus)
    if not LIVE:
        pytest.skip(
            "live Service Bus not configured: set WRITEBACK_LIVE_SERVICEBUS_CONNECTION_STRING"
        )
    return sdk_backend("servicebus-live", LIVE, live_queue_settings(LIVE))


@pytest.fixture
async def sides(backend: Backend) -> AsyncIterator[tuple[CloudTransport, RelayTransport]]:
    cloud, relay = backend.cloud(), backend.relay()
    # Start from an empty request queue: earlier tests' leftovers are someone else's problem.
    while leftovers := await relay.receive(50, 0.2):
        for delivery in leftovers:
            await relay.complete(delivery)
    yield cloud, relay
    await cloud.close()
    await relay.close()


def request_id() -> str:
    return f"req-{uuid.uuid4()}"


async def receive_one(relay: RelayTransport, wait: float = 5.0) -> Any:
    deadline = time.time() + wait
    while time.time() < deadline:
        received = await relay.receive(1, min(1.0, deadline - time.time()))
        if received:
            return received[0]
    return None


async def answer(relay: RelayTransport, request_id: str, body: str, session: str) -> None:
    """The relay's part of a round trip: take the request off its queue, answer, complete."""
    delivery = await receive_one(relay)
    assert delivery is not None
    assert delivery.message_id == request_id
    await relay.send_outcome(request_id, body, session)
    await relay.complete(delivery)


class TestRequestReply:
    async def test_one_round_trip(self, sides: tuple[CloudTransport, RelayTransport]) -> None:
        """A request reaches the relay with its id and the instance's reply session; the outcome
        answered on that session reaches the waiter."""
        cloud, relay = sides
        rid = request_id()
        await cloud.send_request(DOMAIN, rid, "signed-request", time.time() + 60)
        delivery = await receive_one(relay)
        assert (delivery.body, delivery.message_id, delivery.delivery_count) == (
            "signed-request",
            rid,
            1,
        )
        assert (delivery.reply_to, delivery.reply_to_session_id) == (
            OUTCOMES_QUEUE,
            cloud.reply_session,
        )
        await relay.send_outcome(rid, "signed-outcome", cloud.reply_session)
        await relay.complete(delivery)
        assert await cloud.wait_for_outcome(rid, time.time() + 10) == "signed-outcome"

    async def test_every_instance_has_its_own_reply_session(self, backend: Backend) -> None:
        """Two cloud instances never share a reply session, and both can listen at once."""
        first, second = backend.cloud(), backend.cloud()
        try:
            assert first.reply_session != second.reply_session
            await asyncio.gather(first.start(), second.start())
        finally:
            await asyncio.gather(first.close(), second.close())

    async def test_fifty_concurrent_requests_on_one_instance(
        self, sides: tuple[CloudTransport, RelayTransport]
    ) -> None:
        """50 requests of one instance in flight at once, answered in reverse order on its one
        reply session: each waiter gets exactly its own outcome."""
        cloud, relay = sides
        ids = [request_id() for _ in range(50)]
        await asyncio.gather(
            *(cloud.send_request(DOMAIN, rid, rid, time.time() + 60) for rid in ids)
        )
        waiters = [
            asyncio.create_task(cloud.wait_for_outcome(rid, time.time() + 30)) for rid in ids
        ]
        for rid in reversed(ids):
            await relay.send_outcome(rid, f"outcome-for-{rid}", cloud.reply_session)
        results = await asyncio.gather(*waiters)
        assert results == [f"outcome-for-{rid}" for rid in ids]

    async def test_two_waits_for_one_request_both_get_it(
        self, sides: tuple[CloudTransport, RelayTransport]
    ) -> None:
        """A status read on the instance that is still waiting for the request gets the same
        outcome as the original wait."""
        cloud, relay = sides
        rid = request_id()
        await cloud.send_request(DOMAIN, rid, "request", time.time() + 60)
        waits = [
            asyncio.create_task(cloud.wait_for_outcome(rid, time.time() + 10)) for _ in range(2)
        ]
        await asyncio.sleep(0)  # both start waiting before the outcome can arrive
        await relay.send_outcome(rid, "outcome", cloud.reply_session)
        assert await asyncio.gather(*waits) == ["outcome", "outcome"]

    async def test_a_late_outcome_is_found_by_a_later_read(
        self, backend: Backend, sides: tuple[CloudTransport, RelayTransport]
    ) -> None:
        """An outcome arriving after its waiter gave up is kept on the request's own session:
        a later read on another instance finds it, once."""
        cloud, relay = sides
        rid = request_id()
        await cloud.send_request(DOMAIN, rid, "request", time.time() + 60)
        started = time.time()
        assert await cloud.wait_for_outcome(rid, started + 1.0) is None
        assert time.time() - started < 3
        await answer(relay, rid, "late-outcome", cloud.reply_session)
        other = backend.cloud()
        try:
            assert await other.wait_for_outcome(rid, time.time() + 10) == "late-outcome"
            assert await other.wait_for_outcome(rid, time.time() + 1.0) is None
        finally:
            await other.close()

    async def test_another_instances_outcome_is_not_delivered_here(
        self, backend: Backend, sides: tuple[CloudTransport, RelayTransport]
    ) -> None:
        """Each instance's waiters get only what arrives on its own session: an outcome for
        this instance's request sent to another instance's session does not reach the waiter
        here (that instance keeps it on the request's own session, for a later read)."""
        cloud, relay = sides
        other = backend.cloud()
        try:
            mine, theirs = request_id(), request_id()
            await cloud.send_request(DOMAIN, mine, "mine", time.time() + 60)
            await other.send_request(DOMAIN, theirs, "theirs", time.time() + 60)
            waiting_here = asyncio.create_task(cloud.wait_for_outcome(mine, time.time() + 2))
            waiting_there = asyncio.create_task(other.wait_for_outcome(theirs, time.time() + 10))
            await relay.send_outcome(mine, "for-mine", other.reply_session)
            await relay.send_outcome(theirs, "for-theirs", other.reply_session)
            assert await waiting_there == "for-theirs"
            assert await waiting_here is None
            assert await cloud.wait_for_outcome(mine, time.time() + 10) == "for-mine"
        finally:
            await other.close()

    async def test_status_reads_wait_on_each_requests_session(
        self, sides: tuple[CloudTransport, RelayTransport]
    ) -> None:
        """50 reads at once for requests this instance did not send (answered on each request's
        own session, as a relay does for a request naming no reply session): each gets its
        own outcome."""
        cloud, relay = sides
        ids = [request_id() for _ in range(50)]
        waiters = [
            asyncio.create_task(cloud.wait_for_outcome(rid, time.time() + 30)) for rid in ids
        ]
        # Answer in reverse order so no waiter can get an answer by arriving first.
        for rid in reversed(ids):
            await relay.send_outcome(rid, f"outcome-for-{rid}", rid)
        results = await asyncio.gather(*waiters)
        assert results == [f"outcome-for-{rid}" for rid in ids]

    async def test_concurrent_requests(self, sides: tuple[CloudTransport, RelayTransport]) -> None:
        """Twenty requests sent at once (one cloud instance, many callers) all arrive once."""
        cloud, relay = sides
        ids = {request_id() for _ in range(20)}
        await asyncio.gather(
            *(cloud.send_request(DOMAIN, rid, rid, time.time() + 60) for rid in ids)
        )
        seen: list[str] = []
        deadline = time.time() + 15
        while len(seen) < len(ids) and time.time() < deadline:
            for delivery in await relay.receive(20, 1.0):
                seen.append(delivery.body)
                await relay.complete(delivery)
        assert sorted(seen) == sorted(ids)

    async def test_a_timed_out_read_gets_nothing_late(
        self, sides: tuple[CloudTransport, RelayTransport]
    ) -> None:
        """A read returns None at its deadline, and a late outcome reaches no other waiter."""
        cloud, relay = sides
        late, other = request_id(), request_id()
        started = time.time()
        assert await cloud.wait_for_outcome(late, started + 1.5) is None
        assert time.time() - started < 5
        await relay.send_outcome(late, "too-late", late)
        await relay.send_outcome(other, "for-other", other)
        assert await cloud.wait_for_outcome(other, time.time() + 10) == "for-other"

    async def test_an_uncorrelated_outcome_is_dead_lettered(
        self, backend: Backend, sides: tuple[CloudTransport, RelayTransport]
    ) -> None:
        """An outcome without a CorrelationId on the reply session cannot be matched: it is
        dead-lettered (not dropped), and the session keeps serving."""
        cloud, relay = sides
        await backend.drain(f"{OUTCOMES_QUEUE}/$DeadLetterQueue")
        await cloud.start()
        await backend.send_raw(OUTCOMES_QUEUE, "stray", cloud.reply_session, None)
        rid = request_id()
        await cloud.send_request(DOMAIN, rid, "request", time.time() + 60)
        await relay.send_outcome(rid, "outcome", cloud.reply_session)
        assert await cloud.wait_for_outcome(rid, time.time() + 10) == "outcome"
        dead = await backend.dead_letters(OUTCOMES_QUEUE)
        assert [(body, reason) for body, reason, _ in dead] == [("stray", "outcome.uncorrelated")]

    async def test_an_undecodable_outcome_is_dead_lettered_and_blocks_nothing(
        self, backend: Backend, sides: tuple[CloudTransport, RelayTransport]
    ) -> None:
        """An outcome whose body is not UTF-8 text (any relay identity may send one) is
        dead-lettered (`outcome.undecodable`) at once, and the outcome behind it reaches its
        waiter: the listener does not depend on the broker counting its reopens."""
        cloud, relay = sides
        await backend.drain(f"{OUTCOMES_QUEUE}/$DeadLetterQueue")
        await cloud.start()
        rid = request_id()
        await cloud.send_request(DOMAIN, rid, "request", time.time() + 60)
        await backend.send_raw(OUTCOMES_QUEUE, b"\xff\xfe not text", cloud.reply_session, rid)
        await relay.send_outcome(rid, "outcome", cloud.reply_session)
        assert await cloud.wait_for_outcome(rid, time.time() + 10) == "outcome"
        dead = await backend.dead_letters(OUTCOMES_QUEUE)
        assert [reason for _, reason, _ in dead] == ["outcome.undecodable"]

    async def test_a_refused_body_on_the_reply_session_is_skipped(
        self, sides: tuple[CloudTransport, RelayTransport]
    ) -> None:
        """A body the waiter's check refuses (a forgery that arrived first) is not returned:
        the wait goes on and returns the outcome the check accepts."""
        cloud, relay = sides
        rid = request_id()
        await cloud.send_request(DOMAIN, rid, "request", time.time() + 60)
        waiting = asyncio.create_task(
            cloud.wait_for_outcome(rid, time.time() + 10, lambda body: body == "genuine")
        )
        await relay.send_outcome(rid, "forged", cloud.reply_session)
        await relay.send_outcome(rid, "genuine", cloud.reply_session)
        assert await waiting == "genuine"

    async def test_a_refused_body_on_the_requests_session_is_dead_lettered(
        self, backend: Backend, sides: tuple[CloudTransport, RelayTransport]
    ) -> None:
        """A status read skips a body its check refuses, dead-letters it (`outcome.refused`),
        and returns the outcome behind it."""
        cloud, relay = sides
        await backend.drain(f"{OUTCOMES_QUEUE}/$DeadLetterQueue")
        rid = request_id()
        await relay.send_outcome(rid, "forged", rid)
        await relay.send_outcome(rid, "genuine", rid)
        accept = lambda body: body == "genuine"  # noqa: E731 - one line, named for reading
        assert await cloud.wait_for_outcome(rid, time.time() + 10, accept) == "genuine"
        dead = await backend.dead_letters(OUTCOMES_QUEUE)
        assert [(body, reason) for body, reason, _ in dead] == [("forged", "outcome.refused")]

    async def test_close_fails_the_waits_still_running(
        self, sides: tuple[CloudTransport, RelayTransport]
    ) -> None:
        """Closing the cloud side ends its waits with TransportError instead of leaving them."""
        cloud, _ = sides
        rid = request_id()
        await cloud.send_request(DOMAIN, rid, "request", time.time() + 60)
        waiting = asyncio.create_task(cloud.wait_for_outcome(rid, time.time() + 30))
        await asyncio.sleep(0.1)
        await cloud.close()
        with pytest.raises(TransportError):
            await waiting


class TestAdoption:
    """Another instance's reply session: adopted once nobody holds it, left alone while held."""

    async def test_a_gone_instances_outcomes_are_moved_to_their_requests(
        self, backend: Backend, sides: tuple[CloudTransport, RelayTransport]
    ) -> None:
        """An instance closes with a request in flight; the relay answers on its session. A
        second instance adopts the session: the outcome is re-sent to the request's own session,
        where a status read finds it; a stray without a CorrelationId is dead-lettered, not
        counted; the drained session, adopted again, has nothing more."""
        gone, relay = sides
        await backend.drain(f"{OUTCOMES_QUEUE}/$DeadLetterQueue")
        rid = request_id()
        await gone.send_request(DOMAIN, rid, "request", time.time() + 60)
        await gone.close()
        await answer(relay, rid, "orphaned-outcome", gone.reply_session)
        await backend.send_raw(OUTCOMES_QUEUE, "stray", gone.reply_session, None)
        heir = backend.cloud()
        try:
            assert await heir.adopt(gone.reply_session) == 1
            assert await heir.wait_for_outcome(rid, time.time() + 10) == "orphaned-outcome"
            assert await heir.adopt(gone.reply_session) == 0
        finally:
            await heir.close()
        dead = await backend.dead_letters(OUTCOMES_QUEUE)
        assert [(body, reason) for body, reason, _ in dead] == [("stray", "outcome.uncorrelated")]

    async def test_a_live_instances_session_is_not_adopted(
        self, backend: Backend, sides: tuple[CloudTransport, RelayTransport]
    ) -> None:
        """While an instance listens, another's adopt answers None at once and takes nothing:
        the outcome answered on the session afterwards still reaches the live instance's
        waiter."""
        live, relay = sides
        rid = request_id()
        await live.send_request(DOMAIN, rid, "request", time.time() + 60)
        await live.start()
        waiting = asyncio.create_task(live.wait_for_outcome(rid, time.time() + 15))
        other = backend.cloud()
        try:
            started = time.monotonic()
            assert await other.adopt(live.reply_session) is None
            assert time.monotonic() - started < 5
        finally:
            await other.close()
        await answer(relay, rid, "outcome", live.reply_session)
        assert await waiting == "outcome"

    async def test_an_instance_does_not_adopt_its_own_session(
        self, sides: tuple[CloudTransport, RelayTransport]
    ) -> None:
        """Its own session is served by its listener: adopt answers None and takes nothing."""
        cloud, relay = sides
        rid = request_id()
        await cloud.send_request(DOMAIN, rid, "request", time.time() + 60)
        waiting = asyncio.create_task(cloud.wait_for_outcome(rid, time.time() + 15))
        assert await cloud.adopt(cloud.reply_session) is None
        await answer(relay, rid, "outcome", cloud.reply_session)
        assert await waiting == "outcome"


class TestReplySessionLock:
    """The reply session's lock is renewed, and the session comes back after an outage."""

    @staticmethod
    def short_locks() -> list[QueueConfig]:
        return [
            dataclasses.replace(c, lock_duration=1.0) if c.name == OUTCOMES_QUEUE else c
            for c in queues()
        ]

    @pytest.fixture(params=["inprocess", "servicebus-local"])
    def short_lock_backend(self, request: pytest.FixtureRequest) -> Iterator[Backend]:
        if request.param == "inprocess":
            yield inprocess_backend(self.short_locks())
            return
        with LocalServiceBus(self.short_locks()) as bus:
            yield local_backend(bus, identities=False)

    async def test_the_lock_is_renewed_while_listening(
        self, short_lock_backend: Backend, caplog: pytest.LogCaptureFixture
    ) -> None:
        """With a 1 s session lock, an instance that listened for 3 s still holds its session:
        the outcome reaches the waiter and the session was never lost."""
        cloud, relay = short_lock_backend.cloud(), short_lock_backend.relay()
        try:
            await cloud.start()
            await asyncio.sleep(3)
            rid = request_id()
            await cloud.send_request(DOMAIN, rid, "request", time.time() + 60)
            await relay.send_outcome(rid, "outcome", cloud.reply_session)
            assert await cloud.wait_for_outcome(rid, time.time() + 5) == "outcome"
        finally:
            await cloud.close()
            await relay.close()
        assert "reply_session_lost" not in [r.getMessage() for r in caplog.records]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# pyamqp (azure-servicebus 7.15.0) leaves its socket and transport unclosed when the peer
# disappears under a connected client, which is exactly what this test does to it.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_the_reply_session_survives_a_broker_restart(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The local broker restarts (same queues, same port) while a request is in flight: the
    instance reopens its reply session by itself and the outcome reaches the waiter."""
    caplog.set_level(logging.WARNING, "writeback.transport")
    bus = LocalServiceBus(queues(), port=free_port())
    await asyncio.to_thread(bus.start)
    backend = local_backend(bus, identities=False)
    cloud, relay = backend.cloud(), backend.relay()
    try:
        await cloud.start()
        rid = request_id()
        await cloud.send_request(DOMAIN, rid, "request", time.time() + 60)
        waiting = asyncio.create_task(cloud.wait_for_outcome(rid, time.time() + 30))
        delivery = await receive_one(relay)
        assert delivery is not None
        await asyncio.to_thread(bus.stop)
        await asyncio.to_thread(bus.start)
        deadline = time.time() + 20
        while True:  # the relay's sender reconnects too (our relay retries; here, the test)
            try:
                await relay.send_outcome(rid, "outcome", cloud.reply_session)
                break
            except TransportError:
                if time.time() > deadline:
                    raise
                await asyncio.sleep(0.5)
        assert await waiting == "outcome"
    finally:
        await cloud.close()
        await relay.close()
        await asyncio.to_thread(bus.stop)
        gc.collect()  # reap the SDK's leaked sockets here, under this test's warning filter
    assert "reply_session_lost" in [r.getMessage() for r in caplog.records]


class TestDelivery:
    async def test_duplicate_message_id_is_dropped(
        self, sides: tuple[CloudTransport, RelayTransport]
    ) -> None:
        """Sending the same request id twice delivers it once."""
        cloud, relay = sides
        rid = request_id()
        await cloud.send_request(DOMAIN, rid, "first", time.time() + 60)
        await cloud.send_request(DOMAIN, rid, "second", time.time() + 60)
        delivery = await receive_one(relay)
        await relay.complete(delivery)
        assert delivery.body == "first"
        assert await receive_one(relay, wait=1.5) is None

    async def test_expired_requests_are_not_delivered(
        self, backend: Backend, sides: tuple[CloudTransport, RelayTransport]
    ) -> None:
        """A request whose deadline passed before a relay asked for it is never delivered.

        (A receiver already holding link credit may be handed a message before it expires and
        read it after; the relay's pipeline checks the signed expiry for that case.)
        """
        cloud, drained = sides
        await drained.close()  # no receiver may hold link credit while the request expires
        rid = request_id()
        await cloud.send_request(DOMAIN, rid, "stale", time.time() + 1)
        await asyncio.sleep(1.5)  # the point of the test: time passes while no relay listens
        late = backend.relay()
        try:
            assert await receive_one(late, wait=1.0) is None
        finally:
            await late.close()

    async def test_lock_expiry_redelivers_with_count_two(
        self, backend: Backend, sides: tuple[CloudTransport, RelayTransport]
    ) -> None:
        """A relay that dies holding a lock: the request comes back with delivery count 2."""
        cloud, relay = sides
        rid = request_id()
        await cloud.send_request(DOMAIN, rid, "body", time.time() + 60)
        first = await receive_one(relay)
        assert first.delivery_count == 1
        survivor = backend.relay()
        try:
            second = await receive_one(survivor, wait=backend.lock_seconds + 5)
            assert (second.message_id, second.delivery_count) == (rid, 2)
            await survivor.complete(second)
        finally:
            await survivor.close()
        with pytest.raises(TransportLockLost):
            await relay.complete(first)

    async def test_renewed_lock_is_not_lost(
        self, backend: Backend, sides: tuple[CloudTransport, RelayTransport]
    ) -> None:
        """Renewing the lock during a long apply keeps the request from being redelivered."""
        cloud, relay = sides
        rid = request_id()
        await cloud.send_request(DOMAIN, rid, "body", time.time() + 60)
        delivery = await receive_one(relay)
        until = delivery.locked_until
        for _ in range(3):
            await asyncio.sleep(backend.lock_seconds / 2)
            renewed = await relay.renew_lock(delivery)
            assert renewed > until
            until = renewed
        await relay.complete(delivery)
        assert await receive_one(relay, wait=1.0) is None

    async def test_max_delivery_count_dead_letters(
        self, backend: Backend, sides: tuple[CloudTransport, RelayTransport]
    ) -> None:
        """Abandoned as often as the queue's maximum delivery count, the request ends in the
        dead-letter queue."""
        cloud, relay = sides
        rid = request_id()
        await cloud.send_request(DOMAIN, rid, "poison", time.time() + 60)
        counts = []
        for _ in range(backend.max_deliveries):
            delivery = await receive_one(relay)
            counts.append(delivery.delivery_count)
            await relay.abandon(delivery)
        assert counts == list(range(1, backend.max_deliveries + 1))
        assert await receive_one(relay, wait=1.0) is None
        dead = await backend.dead_letters(requests_queue(DOMAIN))
        assert ("poison", "MaxDeliveryCountExceeded") in [(b, r) for b, r, _ in dead]

    async def test_dead_letter_keeps_the_reason(
        self, backend: Backend, sides: tuple[CloudTransport, RelayTransport]
    ) -> None:
        """An unprocessable request is dead-lettered with our reason and description."""
        cloud, relay = sides
        rid = request_id()
        await cloud.send_request(DOMAIN, rid, "forged", time.time() + 60)
        delivery = await receive_one(relay)
        await relay.dead_letter(delivery, "request.invalid_signature", "signed by an unknown key")
        dead = await backend.dead_letters(requests_queue(DOMAIN))
        assert ("forged", "request.invalid_signature", "signed by an unknown key") in dead

    async def test_settling_while_the_relay_waits_is_not_held_up(
        self, sides: tuple[CloudTransport, RelayTransport]
    ) -> None:
        """The pipeline completes a request while the agent already waits for the next one:
        the completion goes through within a receive slice, and the waiting receive still
        gets the next request at once."""
        cloud, relay = sides
        first, second = request_id(), request_id()
        await cloud.send_request(DOMAIN, first, "first", time.time() + 60)
        delivery = await receive_one(relay)
        waiting = asyncio.create_task(relay.receive(1, 5.0))
        await asyncio.sleep(0.05)  # the receive is waiting on an empty queue
        started = time.monotonic()
        await relay.complete(delivery)
        assert time.monotonic() - started < 1.0
        await cloud.send_request(DOMAIN, second, "second", time.time() + 60)
        started = time.monotonic()
        [next_one] = await waiting
        assert next_one.message_id == second
        assert time.monotonic() - started < 1.0
        await relay.complete(next_one)

    async def test_heartbeats_are_sent(
        self, backend: Backend, sides: tuple[CloudTransport, RelayTransport]
    ) -> None:
        """A heartbeat lands on the heartbeats queue."""
        _, relay = sides
        await backend.drain(HEARTBEATS_QUEUE)
        await relay.send_heartbeat("signed-heartbeat")
        assert [body for body, _, _ in await backend.drain(HEARTBEATS_QUEUE)] == [
            "signed-heartbeat"
        ]


class TestWhatAzureDoes:
    """The SDK transport survives what Service Bus does now and then (the broker's faults)."""

    @pytest.fixture
    def bus(self) -> Iterator[LocalServiceBus]:
        with LocalServiceBus(queues(), policy=writeback_policy([DOMAIN])) as running:
            yield running

    async def test_a_missing_role_dead_letters_an_orphan_after_bounded_tries(self) -> None:
        """Without the Sender role on outcomes the cloud cannot forward a late outcome: it
        is dead-lettered (`outcome.undispatchable`) after a bounded number of tries, however
        the broker counts the session's reopens, and the reply session keeps serving."""
        policy = writeback_policy([DOMAIN]).without(CLOUD_KEY_NAME, OUTCOMES_QUEUE, "Send")
        with LocalServiceBus(queues(), policy=policy) as bus:
            await self.forward_without_the_role(local_backend(bus))

    @staticmethod
    async def forward_without_the_role(backend: Backend) -> None:
        cloud, relay = backend.cloud(), backend.relay()
        try:
            await cloud.start()
            late, rid = request_id(), request_id()
            await relay.send_outcome(late, "nobody-waits", cloud.reply_session)
            await cloud.send_request(DOMAIN, rid, "request", time.time() + 60)
            await relay.send_outcome(rid, "outcome", cloud.reply_session)
            assert await cloud.wait_for_outcome(rid, time.time() + 10) == "outcome"
        finally:
            await cloud.close()
            await relay.close()
        dead = await backend.dead_letters(OUTCOMES_QUEUE)
        assert [(body, reason) for body, reason, _ in dead] == [
            ("nobody-waits", "outcome.undispatchable")
        ]

    async def test_adoption_is_retried_while_throttled(self, bus: LocalServiceBus) -> None:
        """A namespace answering `server-busy` delays an adoption but does not fail it."""
        backend = local_backend(bus)
        gone, heir, relay = backend.cloud(), backend.cloud(), backend.relay()
        try:
            rid = request_id()
            await gone.send_request(DOMAIN, rid, "request", time.time() + 60)
            await gone.close()
            await relay.send_outcome(rid, "orphaned-outcome", gone.reply_session)
            bus.faults.busy(2)
            assert await heir.adopt(gone.reply_session) == 1
        finally:
            await heir.close()
            await relay.close()

    async def test_an_in_flight_request_is_settled_after_a_forced_detach(
        self, bus: LocalServiceBus
    ) -> None:
        """The broker force-detaches the relay's receive link while a request is in flight (as
        updating the entity does): the lock is still valid, so the relay renews and completes
        it by lock token, and the request is never delivered again."""
        backend = local_backend(bus)
        cloud, relay = backend.cloud(), backend.relay()
        try:
            rid = request_id()
            await cloud.send_request(DOMAIN, rid, "request", time.time() + 60)
            delivery = await receive_one(relay)
            bus.detach(requests_queue(DOMAIN))
            with contextlib.suppress(TransportError):  # the receive that meets the detach
                assert await relay.receive(1, 0.5) == []
            assert await relay.renew_lock(delivery) > delivery.locked_until
            await relay.complete(delivery)
            assert await receive_one(relay, wait=backend.lock_seconds + 1) is None
        finally:
            await cloud.close()
            await relay.close()
        assert bus.broker.stats(requests_queue(DOMAIN))["dead_lettered"] == 0

    async def test_a_lock_is_kept_and_settled_with_the_relays_clock_ahead(
        self, bus: LocalServiceBus
    ) -> None:
        """With the relay's clock further ahead of the service's than a lock lasts (the SDK
        judges every lock expired on it), a request renewed every half lock on the relay's own
        clock is never redelivered, and completes."""
        bus.faults.clock_offset = -3 * LOCK_SECONDS
        backend = local_backend(bus)
        cloud, relay = backend.cloud(), backend.relay()
        try:
            rid = request_id()
            await cloud.send_request(DOMAIN, rid, "request", time.time() + 60)
            delivery = await receive_one(relay)
            assert delivery.lock_seconds == backend.lock_seconds
            for _ in range(3):
                await asyncio.sleep(delivery.lock_seconds / 2)  # the point: time passes
                await relay.renew_lock(delivery)
            await relay.complete(delivery)
        finally:
            await cloud.close()
            await relay.close()
        assert bus.broker.stats(requests_queue(DOMAIN))["active"] == 0

    async def test_a_reopening_instances_session_is_not_adopted(self, bus: LocalServiceBus) -> None:
        """The broker detaches a live instance's reply session; while the instance waits to
        reopen it (3 s here), another's adopt answers None and moves nothing, and the outcome
        answered meanwhile reaches the live instance's waiter once it is back."""
        backend = local_backend(bus)
        live, other, relay = backend.cloud(), backend.cloud(), backend.relay()
        assert isinstance(live, ServiceBusCloud)
        live.reopen = Backoff(first=3.0, most=3.0)
        try:
            await live.start()
            rid = request_id()
            await live.send_request(DOMAIN, rid, "request", time.time() + 60)
            waiting = asyncio.create_task(live.wait_for_outcome(rid, time.time() + 20))
            bus.detach(OUTCOMES_QUEUE)
            deadline = time.monotonic() + 5
            while live._listening.is_set():  # the detach reached the listener
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            await relay.send_outcome(rid, "outcome", live.reply_session)
            assert await other.adopt(live.reply_session) is None
            assert await waiting == "outcome"
        finally:
            await asyncio.gather(live.close(), other.close(), relay.close())

    async def test_the_service_clock_is_bounded_from_a_peek(self, bus: LocalServiceBus) -> None:
        """With the service's clock 2 minutes ahead of this host's, a peek at a queued request
        shows this host at least about that far behind, and consumes nothing."""
        bus.faults.clock_offset = 120
        backend = local_backend(bus)
        cloud = backend.cloud()
        try:
            await cloud.send_request(DOMAIN, request_id(), "request", time.time() + 600)
        finally:
            await cloud.close()
        relay_settings = ServiceBusSettings(
            connection_string=bus.connection_string_for(RELAY_KEY_NAME)
        )
        clock = await read_service_clock(relay_settings, None, DOMAIN)
        assert (clock.seen, clock.behind is not None) == (1, True)
        assert 115 < (clock.behind or 0) <= 120
        assert bus.broker.stats(requests_queue(DOMAIN))["active"] == 1

    async def test_an_idle_sender_is_refreshed_before_it_is_detached(
        self, bus: LocalServiceBus
    ) -> None:
        """A sender idle longer than its refresh time is reopened before the broker's idle
        detach: the next send goes through at once instead of meeting a detached link."""
        bus.faults.link_idle = 1.0
        relay = local_backend(bus).relay()
        assert isinstance(relay, ServiceBusRelay)
        relay.sender_refresh_seconds = 0.5
        try:
            await relay.send_heartbeat("first")
            await asyncio.sleep(2.0)  # the point of the test: the sender's link is idle
            started = time.monotonic()
            await relay.send_heartbeat("second")
            assert time.monotonic() - started < 0.7
        finally:
            await relay.close()
        assert bus.broker.stats(HEARTBEATS_QUEUE)["active"] == 2


class TestLimits:
    async def test_a_long_dead_letter_description_is_cut_to_what_azure_takes(
        self, backend: Backend, sides: tuple[CloudTransport, RelayTransport]
    ) -> None:
        """A dead-letter description longer than Service Bus's 4,096 characters is cut to
        that length instead of failing the dead-lettering."""
        cloud, relay = sides
        await backend.drain(f"{requests_queue(DOMAIN)}/$DeadLetterQueue")
        rid = request_id()
        await cloud.send_request(DOMAIN, rid, "request", time.time() + 60)
        delivery = await receive_one(relay)
        await relay.dead_letter(delivery, "request.invalid", "x" * 5000)
        dead = await backend.dead_letters(requests_queue(DOMAIN))
        assert [(reason, len(d or "")) for _, reason, d in dead] == [("request.invalid", 4096)]
