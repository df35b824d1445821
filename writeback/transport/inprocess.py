"""The transport ports on a `MemoryBroker` in this process: Service Bus semantics, no network.

For unit tests of the cloud service and the relay: the same queues, sessions, peek-lock,
delivery counts, TTL and duplicate detection as the Service Bus transport, because the model
underneath is the one the local AMQP broker serves. Waiting polls the broker every few
milliseconds until a deadline; it is a test fake, not a product transport.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from writeback.errors import TransportLockLost, TransportUnavailable
from writeback.transport import HEARTBEATS_QUEUE, OUTCOMES_QUEUE, Delivery, requests_queue
from writeback.transport.memory import (
    MemoryBroker,
    MessageLockLost,
    SessionCannotBeLocked,
    StoredMessage,
    UnknownQueue,
)

POLL_SECONDS = 0.005
OUTCOME_TTL = 300.0
HEARTBEAT_TTL = 300.0


class _InProcess:
    def __init__(self, broker: MemoryBroker, clock: Callable[[], float] = time.time) -> None:
        self.broker = broker
        self._clock = clock

    def _send(self, queue: str, message: StoredMessage) -> None:
        try:
            self.broker.send(queue, message)
        except UnknownQueue as exc:
            raise TransportUnavailable(f"send to {queue}: no such queue") from exc

    async def close(self) -> None:
        return None


class InProcessCloud(_InProcess):
    """CloudTransport on a MemoryBroker."""

    async def send_request(
        self, domain: str, request_id: str, body: str, expires_at: float
    ) -> None:
        self._send(
            requests_queue(domain),
            StoredMessage(
                body=body.encode(),
                message_id=request_id,
                reply_to=OUTCOMES_QUEUE,
                reply_to_session_id=request_id,
                ttl=max(1.0, expires_at - self._clock()),
            ),
        )

    async def wait_for_outcome(self, request_id: str, deadline: float) -> str | None:
        owner = object()
        try:
            self.broker.lock_session(OUTCOMES_QUEUE, request_id, owner)
        except SessionCannotBeLocked as exc:
            raise TransportUnavailable(f"session {request_id} is held by another waiter") from exc
        try:
            while self._clock() < deadline:
                self.broker.tick()
                received = self.broker.receive(
                    OUTCOMES_QUEUE, 1, session_id=request_id, owner=owner
                )
                if received:
                    self.broker.complete(OUTCOMES_QUEUE, str(received[0].lock_token))
                    return received[0].body.decode()
                await asyncio.sleep(POLL_SECONDS)
            return None
        finally:
            self.broker.release_session(OUTCOMES_QUEUE, request_id, owner)


class InProcessRelay(_InProcess):
    """RelayTransport on a MemoryBroker, for one domain."""

    def __init__(
        self, broker: MemoryBroker, domain: str, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(broker, clock)
        self.queue = requests_queue(domain)

    async def receive(self, max_messages: int, max_wait: float) -> list[Delivery]:
        deadline = self._clock() + max_wait
        while True:
            self.broker.tick()
            received = self.broker.receive(self.queue, max_messages)
            if received or self._clock() >= deadline:
                return [self._delivery(message) for message in received]
            await asyncio.sleep(POLL_SECONDS)

    @staticmethod
    def _delivery(message: StoredMessage) -> Delivery:
        return Delivery(
            body=message.body.decode(),
            message_id=str(message.message_id),
            delivery_count=message.delivery_count + 1,
            enqueued_at=message.enqueued_at,
            locked_until=message.locked_until or 0.0,
            reply_to=message.reply_to,
            reply_to_session_id=message.reply_to_session_id,
            handle=message.lock_token,
        )

    def _settle(self, action: Callable[[str, str], object], delivery: Delivery) -> object:
        try:
            return action(self.queue, str(delivery.handle))
        except MessageLockLost as exc:
            raise TransportLockLost(f"{self.queue}: lock of {delivery.message_id} lost") from exc

    async def renew_lock(self, delivery: Delivery) -> float:
        return float(self._settle(self.broker.renew_lock, delivery))  # type: ignore[arg-type]

    async def complete(self, delivery: Delivery) -> None:
        self._settle(self.broker.complete, delivery)

    async def abandon(self, delivery: Delivery) -> None:
        self._settle(self.broker.abandon, delivery)

    async def dead_letter(self, delivery: Delivery, reason: str, description: str) -> None:
        self._settle(
            lambda queue, token: self.broker.dead_letter(queue, token, reason, description),
            delivery,
        )

    async def send_outcome(self, request_id: str, body: str) -> None:
        self._send(
            OUTCOMES_QUEUE,
            StoredMessage(
                body=body.encode(),
                session_id=request_id,
                correlation_id=request_id,
                ttl=OUTCOME_TTL,
            ),
        )

    async def send_heartbeat(self, body: str) -> None:
        self._send(HEARTBEATS_QUEUE, StoredMessage(body=body.encode(), ttl=HEARTBEAT_TTL))
