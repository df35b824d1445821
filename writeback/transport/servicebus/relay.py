"""The relay's side of the Service Bus transport (RelayTransport) for one domain.

One peek-lock receiver on the domain's request queue, opened on first use and reused; lock
renewal and settlement on the message's own receiver; outcomes on the session the verified
request names; heartbeats.

A receive asks the SDK for one message at a time: asked for more, it waits a further 0.2 s for
a batch once the first message is in, which every request would pay; the agent asks again at
once while it has room, so a backlog still drains one message per broker round trip. The
receiver is used by one operation at a time (a lock): the pipeline's tasks settle and renew
while the agent receives, and pyamqp, used concurrently on one connection, lets one reader take
the frame the other waits for, so both stall for a whole socket timeout (0.2 s, 1 s over
WebSockets). A receive therefore waits in slices of RECEIVE_SLICE seconds, letting waiting
settlements through in between.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from azure.core.credentials_async import AsyncTokenCredential
from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage, ServiceBusReceiveMode
from azure.servicebus.aio import ServiceBusReceiver

from writeback.errors import TransportLockLost
from writeback.transport import (
    HEARTBEATS_QUEUE,
    MAX_DEAD_LETTER_TEXT,
    OUTCOMES_QUEUE,
    Delivery,
    requests_queue,
)
from writeback.transport.servicebus.bus import (
    CONTENT_TYPE,
    HEARTBEAT_TTL,
    OUTCOME_TTL,
    Bus,
    quietly,
    translate_servicebus_error,
)
from writeback.transport.servicebus.locks import (
    ABANDON,
    COMPLETE,
    DEAD_LETTER,
    Received,
    link_of,
    on_its_link,
    settle_by_lock_token,
)
from writeback.transport.settings import ServiceBusSettings

_WHAT = {COMPLETE: "complete", ABANDON: "abandon", DEAD_LETTER: "dead-letter"}
RECEIVE_SLICE = 0.25  # seconds a receive holds the receiver before settlements may go first
T = TypeVar("T")


class ServiceBusRelay(Bus):
    """The relay side of the transport (RelayTransport) for one domain."""

    def __init__(
        self,
        settings: ServiceBusSettings,
        credential: AsyncTokenCredential | None,
        domain: str,
        **extra: Any,
    ) -> None:
        super().__init__(settings, credential, **extra)
        self.queue = requests_queue(domain)
        self._receiver: ServiceBusReceiver | None = None
        self._using = asyncio.Lock()  # one receiver operation at a time (see the module doc)

    async def receive(self, max_messages: int, max_wait: float) -> list[Delivery]:
        deadline = time.monotonic() + max_wait
        while True:
            async with self._using:
                received = await self._receive_one(max(0.01, deadline - time.monotonic()))
            if received or time.monotonic() >= deadline:
                return received

    async def _open_receiver(self) -> ServiceBusReceiver:
        """The receiver, its link opened (call holding `_using`); a new one if there is none."""
        if self._receiver is not None:
            return self._receiver
        receiver = self.client.get_queue_receiver(
            self.queue, receive_mode=ServiceBusReceiveMode.PEEK_LOCK, prefetch_count=0
        )
        # Open the link now: a short max_wait would otherwise also bound the link's opening,
        # and a receive could time out before it ever asked for a message. The outcomes sender
        # opens meanwhile, so the first answer does not pay for it (best effort: a failure
        # there is the first send's to report).
        opened, _ = await asyncio.gather(
            receiver.__aenter__(), self.warm(OUTCOMES_QUEUE), return_exceptions=True
        )
        if isinstance(opened, BaseException):
            await quietly(receiver.close())
            raise translate_servicebus_error(opened, f"open receiver on {self.queue}")
        self._receiver = receiver
        return receiver

    async def _receive_one(self, wait: float) -> list[Delivery]:
        receiver = await self._open_receiver()
        try:
            received = await receiver.receive_messages(
                max_message_count=1, max_wait_time=min(RECEIVE_SLICE, wait)
            )
        except Exception as exc:
            # Drop the receiver: the next call reconnects (the caller backs off between calls).
            # The locks of the deliveries in flight stay valid: they are settled by lock token.
            self._receiver = None
            await quietly(receiver.close())
            raise translate_servicebus_error(exc, f"receive from {self.queue}") from exc
        link = link_of(receiver)
        return [self._delivery(message, link) for message in received]

    def _delivery(self, message: ServiceBusReceivedMessage, link: object) -> Delivery:
        return Delivery(
            body=str(message),
            message_id=str(message.message_id),
            # The AMQP header counts earlier failed deliveries; ours counts this one too.
            delivery_count=(message.delivery_count or 0) + 1,
            enqueued_at=message.enqueued_time_utc.timestamp() if message.enqueued_time_utc else 0.0,
            locked_until=message.locked_until_utc.timestamp() if message.locked_until_utc else 0.0,
            reply_to=message.reply_to,
            reply_to_session_id=message.reply_to_session_id,
            handle=Received(message, link),
            lock_seconds=self._settings.lock_duration,
        )

    async def _on_receiver(
        self,
        delivery: Delivery,
        what: str,
        operation: Callable[[ServiceBusReceiver, Received], Awaitable[T]],
    ) -> T:
        """Run one settlement or renewal on the queue's receiver, reconnecting it if it is
        gone: a lock outlives the link that delivered its message (see `locks`)."""
        received = delivery.handle
        if not isinstance(received, Received):
            raise TransportLockLost(f"{self.queue}: {delivery.message_id} was not received here")
        async with self._using:
            receiver = await self._open_receiver()
            try:
                return await operation(receiver, received)
            except Exception as exc:
                raise translate_servicebus_error(exc, f"{what} {delivery.message_id}") from exc

    async def renew_lock(self, delivery: Delivery) -> float:
        # By lock token on the management link: any receiver on the queue can renew it.
        renewed = await self._on_receiver(
            delivery, "renew lock of", lambda r, m: r.renew_message_lock(m.message)
        )
        return renewed.timestamp()

    async def _settle(
        self,
        delivery: Delivery,
        disposition: str,
        reason: str | None = None,
        description: str | None = None,
    ) -> None:
        async def settle(receiver: ServiceBusReceiver, received: Received) -> None:
            message = received.message
            if not on_its_link(receiver, received):
                await settle_by_lock_token(receiver, message, disposition, reason, description)
            elif disposition == COMPLETE:
                await receiver.complete_message(message)
            elif disposition == ABANDON:
                await receiver.abandon_message(message)
            else:
                await receiver.dead_letter_message(
                    message, reason=reason, error_description=description
                )

        await self._on_receiver(delivery, _WHAT[disposition], settle)

    async def complete(self, delivery: Delivery) -> None:
        await self._settle(delivery, COMPLETE)

    async def abandon(self, delivery: Delivery) -> None:
        await self._settle(delivery, ABANDON)

    async def dead_letter(self, delivery: Delivery, reason: str, description: str) -> None:
        # Service Bus refuses a reason or description over MAX_DEAD_LETTER_TEXT characters.
        reason, description = reason[:MAX_DEAD_LETTER_TEXT], description[:MAX_DEAD_LETTER_TEXT]
        await self._settle(delivery, DEAD_LETTER, reason, description)

    async def send_outcome(self, request_id: str, body: str, session: str) -> None:
        # The session comes from the verified, signed request (its reply session, or its id):
        # a request's ReplyTo and ReplyToSessionId are not signed, so they are never trusted
        # to choose where an outcome goes.
        await self._send(
            OUTCOMES_QUEUE,
            ServiceBusMessage(
                body,
                session_id=session,
                correlation_id=request_id,
                content_type=CONTENT_TYPE,
                time_to_live=OUTCOME_TTL,
            ),
        )

    async def send_heartbeat(self, body: str) -> None:
        await self._send(
            HEARTBEATS_QUEUE,
            ServiceBusMessage(body, content_type=CONTENT_TYPE, time_to_live=HEARTBEAT_TTL),
        )

    async def close(self) -> None:
        async with self._using:
            if self._receiver is not None:
                await quietly(self._receiver.close())
                self._receiver = None
        await super().close()
