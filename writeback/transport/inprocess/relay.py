"""The relay's side of the in-process transport (RelayTransport) on a `MemoryBroker`.

Receives peek-locked requests from one domain's queue, renews, completes, abandons and
dead-letters them by lock token, and sends outcomes (to the session the request named) and
heartbeats, as the Service Bus transport's relay side does (`servicebus/relay.py`). A lost lock
raises TransportLockLost. A test fake: it never touches a network or looks inside bodies.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from writeback.errors import TransportLockLost
from writeback.transport import (
    HEARTBEATS_QUEUE,
    MAX_DEAD_LETTER_TEXT,
    OUTCOMES_QUEUE,
    Delivery,
    requests_queue,
)
from writeback.transport.inprocess.base import OUTCOME_TTL, InProcess
from writeback.transport.memory import MemoryBroker, MessageLockLost, StoredMessage

HEARTBEAT_TTL = 300.0


class InProcessRelay(InProcess):
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
            await self._changed(deadline - self._clock())

    def _delivery(self, message: StoredMessage) -> Delivery:
        return Delivery(
            body=message.body.decode(),
            message_id=str(message.message_id),
            delivery_count=message.delivery_count + 1,
            enqueued_at=message.enqueued_at,
            locked_until=message.locked_until or 0.0,
            reply_to=message.reply_to,
            reply_to_session_id=message.reply_to_session_id,
            handle=message.lock_token,
            lock_seconds=self.broker.queue(self.queue).lock_duration,
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
        reason, description = reason[:MAX_DEAD_LETTER_TEXT], description[:MAX_DEAD_LETTER_TEXT]
        self._settle(
            lambda queue, token: self.broker.dead_letter(queue, token, reason, description),
            delivery,
        )

    async def send_outcome(self, request_id: str, body: str, session: str) -> None:
        self._send(
            OUTCOMES_QUEUE,
            StoredMessage(
                body=body.encode(), session_id=session, correlation_id=request_id, ttl=OUTCOME_TTL
            ),
        )

    async def send_heartbeat(self, body: str) -> None:
        self._send(HEARTBEATS_QUEUE, StoredMessage(body=body.encode(), ttl=HEARTBEAT_TTL))
