"""One contract for every transport: in-process, the SDK on the local broker, a live namespace.

The same tests run against `InProcessCloud`/`InProcessRelay` (the queue model in this process),
against `ServiceBusCloud`/`ServiceBusRelay` with the unmodified azure-servicebus SDK talking AMQP
to the local broker, and against a real Service Bus namespace when
`WRITEBACK_LIVE_SERVICEBUS_CONNECTION_STRING` is set (its queues must exist as infra/ declares them,
for the domain in `WRITEBACK_LIVE_SERVICEBUS_DOMAIN`).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from azure.servicebus import ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient

from devstack.servicebus import LocalServiceBus, writeback_queues
from writeback.errors import TransportLockLost
from writeback.transport import (
    HEARTBEATS_QUEUE,
    OUTCOMES_QUEUE,
    CloudTransport,
    RelayTransport,
    requests_queue,
)
from writeback.transport.inprocess import InProcessCloud, InProcessRelay
from writeback.transport.memory import MemoryBroker, QueueConfig
from writeback.transport.servicebus import ServiceBusCloud, ServiceBusRelay
from writeback.transport.settings import ServiceBusSettings

DOMAIN = os.environ.get("WRITEBACK_LIVE_SERVICEBUS_DOMAIN", "corp.example.test")
LIVE = os.environ.get("WRITEBACK_LIVE_SERVICEBUS_CONNECTION_STRING")
LOCK_SECONDS = 2.0
MAX_DELIVERIES = 3


def queues() -> list[QueueConfig]:
    """The entities infra/ declares, with short locks so lock expiry is quick to test."""
    return writeback_queues([DOMAIN], lock_duration=LOCK_SECONDS, max_delivery_count=MAX_DELIVERIES)


@dataclass
class Backend:
    """How to build both sides of one transport, and to look into its dead-letter queue."""

    name: str
    cloud: Callable[[], CloudTransport]
    relay: Callable[[], RelayTransport]
    drain: Callable[[str], Any]  # async: queue -> [(body, dead-letter reason, description)]
    lock_seconds: float = LOCK_SECONDS

    async def dead_letters(self, queue: str) -> list[tuple[str, str | None, str | None]]:
        return list(await self.drain(f"{queue}/$DeadLetterQueue"))


@pytest.fixture(scope="module")
def local_bus() -> Iterator[LocalServiceBus]:
    with LocalServiceBus(queues()) as bus:
        yield bus


def sdk_backend(name: str, connection_string: str) -> Backend:
    settings = ServiceBusSettings(connection_string=connection_string)

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
        return [(str(m), m.dead_letter_reason, m.dead_letter_error_description) for m in found]

    return Backend(
        name,
        lambda: ServiceBusCloud(settings, None),
        lambda: ServiceBusRelay(settings, None, DOMAIN),
        drain,
    )


def inprocess_backend() -> Backend:
    broker = MemoryBroker(queues())

    async def drain(queue: str) -> list[tuple[str, str | None, str | None]]:
        broker.tick()
        found = broker.receive(queue, 50)
        for message in found:
            broker.complete(queue, str(message.lock_token))
        return [(m.body.decode(), m.dead_letter_reason, m.dead_letter_description) for m in found]

    return Backend(
        "inprocess", lambda: InProcessCloud(broker), lambda: InProcessRelay(broker, DOMAIN), drain
    )


@pytest.fixture(params=["inprocess", "servicebus-local", "servicebus-live"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "inprocess":
        return inprocess_backend()
    if request.param == "servicebus-local":
        bus: LocalServiceBus = request.getfixturevalue("local_bus")
        return sdk_backend("servicebus-local", bus.connection_string)
    if not LIVE:
        pytest.skip(
            "live Service Bus not configured: set WRITEBACK_LIVE_SERVICEBUS_CONNECTION_STRING"
        )
    return sdk_backend("servicebus-live", LIVE)


@pytest.fixture
async def sides(backend: Backend) -> AsyncIterator[tuple[CloudTransport, RelayTransport]]:
    cloud, relay = backend.cloud(), backend.relay()
    # Start from an empty request queue: earlier tests' leftovers are someone else's problem.
    while await relay.receive(50, 0.2):
        pass
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


class TestRequestReply:
    async def test_one_round_trip(self, sides: tuple[CloudTransport, RelayTransport]) -> None:
        """A request reaches the relay with its id and reply address; the outcome comes back."""
        cloud, relay = sides
        rid = request_id()
        await cloud.send_request(DOMAIN, rid, "signed-request", time.time() + 60)
        delivery = await receive_one(relay)
        assert (delivery.body, delivery.message_id, delivery.delivery_count) == (
            "signed-request",
            rid,
            1,
        )
        assert (delivery.reply_to, delivery.reply_to_session_id) == (OUTCOMES_QUEUE, rid)
        await relay.send_outcome(rid, "signed-outcome")
        await relay.complete(delivery)
        assert await cloud.wait_for_outcome(rid, time.time() + 10) == "signed-outcome"

    async def test_fifty_concurrent_waiters_get_their_own(
        self, sides: tuple[CloudTransport, RelayTransport]
    ) -> None:
        """50 waiters at once: each receives exactly the outcome for its own request."""
        cloud, relay = sides
        ids = [request_id() for _ in range(50)]
        waiters = [
            asyncio.create_task(cloud.wait_for_outcome(rid, time.time() + 30)) for rid in ids
        ]
        # Answer in reverse order so no waiter can get an answer by arriving first.
        for rid in reversed(ids):
            await relay.send_outcome(rid, f"outcome-for-{rid}")
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

    async def test_a_timed_out_waiter_gets_nothing_late(
        self, sides: tuple[CloudTransport, RelayTransport]
    ) -> None:
        """A waiter returns None at its deadline, and a late outcome reaches no other waiter."""
        cloud, relay = sides
        late, other = request_id(), request_id()
        started = time.time()
        assert await cloud.wait_for_outcome(late, started + 1.5) is None
        assert time.time() - started < 5
        await relay.send_outcome(late, "too-late")
        await relay.send_outcome(other, "for-other")
        assert await cloud.wait_for_outcome(other, time.time() + 10) == "for-other"


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
        """Abandoned MAX_DELIVERIES times, the request ends in the dead-letter queue."""
        cloud, relay = sides
        rid = request_id()
        await cloud.send_request(DOMAIN, rid, "poison", time.time() + 60)
        counts = []
        for _ in range(MAX_DELIVERIES):
            delivery = await receive_one(relay)
            counts.append(delivery.delivery_count)
            await relay.abandon(delivery)
        assert counts == list(range(1, MAX_DELIVERIES + 1))
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
