"""The transport on Azure Service Bus (azure-servicebus, asyncio).

Cloud side: requests go to the domain's queue with MessageId = request id (duplicate detection
drops a resend), a time-to-live that ends at the request's deadline, and ReplyTo /
ReplyToSessionId naming the outcomes queue and the request's own session; the caller then locks
exactly that session and waits, so it can only ever receive its own outcome. Relay side:
peek-lock receive, lock renewal, complete / abandon / dead-letter, outcomes and heartbeats.
Clients and senders are created lazily (nothing connects at import or construction) and reused.
The SDK's exceptions become `TransportError`s in `translate_servicebus_error` and nowhere else.
Message bodies are opaque signed tokens and are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import timedelta
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential
from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage, ServiceBusReceiveMode
from azure.servicebus import exceptions as sb
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver, ServiceBusSender

from writeback.errors import TransportError, TransportLockLost, TransportUnavailable
from writeback.transport import HEARTBEATS_QUEUE, OUTCOMES_QUEUE, Delivery, requests_queue
from writeback.transport.settings import ServiceBusSettings

HEARTBEAT_TTL = timedelta(minutes=5)
OUTCOME_TTL = timedelta(minutes=5)
CONTENT_TYPE = "application/jose"

_UNAVAILABLE = (
    sb.ServiceBusConnectionError,
    sb.ServiceBusCommunicationError,
    sb.OperationTimeoutError,
    sb.ServiceBusServerBusyError,
    sb.ServiceBusAuthenticationError,
    sb.ServiceBusAuthorizationError,
    sb.MessagingEntityNotFoundError,
    sb.MessagingEntityDisabledError,
    sb.ServiceBusQuotaExceededError,
    OSError,
)
_LOCK_LOST = (
    sb.MessageLockLostError,
    sb.SessionLockLostError,
    sb.MessageAlreadySettled,
    sb.AutoLockRenewFailed,
    sb.AutoLockRenewTimeout,
)


def translate_servicebus_error(exc: BaseException, where: str) -> TransportError:
    """The one conversion from azure-servicebus exceptions to ours."""
    if isinstance(exc, TransportError):
        return exc
    text = f"{where}: {type(exc).__name__}: {exc}"
    if isinstance(exc, _LOCK_LOST):
        return TransportLockLost(text)
    if isinstance(exc, _UNAVAILABLE):
        return TransportUnavailable(text)
    return TransportError(text)


def build_client(
    settings: ServiceBusSettings, credential: AsyncTokenCredential | None, **extra: Any
) -> ServiceBusClient:
    """An (unconnected) async client: namespace + credential, or a connection string."""
    options = {**settings.client_options(), **extra}
    if settings.connection_string:
        return ServiceBusClient.from_connection_string(settings.connection_string, **options)
    if settings.namespace is None or credential is None:
        raise TransportError("servicebus.namespace needs an Entra credential")
    return ServiceBusClient(settings.namespace, credential, **options)


class _Bus:
    def __init__(
        self, settings: ServiceBusSettings, credential: AsyncTokenCredential | None, **extra: Any
    ) -> None:
        self._settings = settings
        self._credential = credential
        self._extra = extra
        self._client: ServiceBusClient | None = None
        self._senders: dict[str, ServiceBusSender] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._send_locks: dict[str, asyncio.Lock] = {}

    @property
    def client(self) -> ServiceBusClient:
        if self._client is None:
            self._client = build_client(self._settings, self._credential, **self._extra)
        return self._client

    async def _send(self, queue: str, message: ServiceBusMessage) -> None:
        # An SDK sender is not safe for concurrent use: one send at a time per queue (a send
        # takes milliseconds once the link is open; opening it twice at once breaks it).
        async with self._send_locks.setdefault(queue, asyncio.Lock()):
            sender = self._senders.get(queue)
            if sender is None:
                sender = self._senders[queue] = self.client.get_queue_sender(queue)
            try:
                await sender.send_messages(message)
            except Exception as exc:
                # A broken sender is rebuilt on the next send (the SDK retries within a send).
                self._senders.pop(queue, None)
                await _quietly(sender.close())
                raise translate_servicebus_error(exc, f"send to {queue}") from exc

    async def close(self) -> None:
        for sender in self._senders.values():
            await _quietly(sender.close())
        self._senders.clear()
        if self._client is not None:
            await _quietly(self._client.close())
            self._client = None


async def probe(
    settings: ServiceBusSettings, credential: AsyncTokenCredential | None, domain: str
) -> list[str]:
    """Open (and close) every link a relay uses, consuming nothing; what was reached.

    Authenticates, and proves each entity exists and the identity may use it: receive on the
    domain's request queue, send on the outcomes and heartbeats queues.
    """
    reached: list[str] = []
    client = build_client(settings, credential)
    try:
        async with client:
            async with client.get_queue_receiver(requests_queue(domain), prefetch_count=0):
                reached.append(f"receive {requests_queue(domain)}")
            for queue in (OUTCOMES_QUEUE, HEARTBEATS_QUEUE):
                async with client.get_queue_sender(queue):
                    reached.append(f"send {queue}")
    except Exception as exc:
        where = "probe after " + ", ".join(reached) if reached else "probe: connect"
        raise translate_servicebus_error(exc, where) from exc
    return reached


class ServiceBusCloud(_Bus):
    """The cloud side of the transport (CloudTransport)."""

    async def send_request(
        self, domain: str, request_id: str, body: str, expires_at: float
    ) -> None:
        ttl = max(1.0, expires_at - time.time())
        message = ServiceBusMessage(
            body,
            message_id=request_id,
            content_type=CONTENT_TYPE,
            time_to_live=timedelta(seconds=ttl),
            reply_to=OUTCOMES_QUEUE,
            reply_to_session_id=request_id,
        )
        await self._send(requests_queue(domain), message)

    async def wait_for_outcome(self, request_id: str, deadline: float) -> str | None:
        remaining = deadline - time.time()
        if remaining <= 0:
            return None
        receiver = self.client.get_queue_receiver(
            OUTCOMES_QUEUE, session_id=request_id, max_wait_time=remaining
        )
        try:
            await receiver.__aenter__()
            while (remaining := deadline - time.time()) > 0:
                received = await receiver.receive_messages(
                    max_message_count=1, max_wait_time=remaining
                )
                if received:
                    await receiver.complete_message(received[0])
                    return str(received[0])
        except Exception as exc:
            raise translate_servicebus_error(exc, f"wait for outcome {request_id}") from exc
        finally:
            # Closing a link is a round trip of its own: answer the caller first, close after.
            self._background(receiver.close())
        return None

    def _background(self, closing: Any) -> None:
        task = asyncio.create_task(_quietly(closing))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=15)
        await super().close()


class ServiceBusRelay(_Bus):
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

    async def receive(self, max_messages: int, max_wait: float) -> list[Delivery]:
        receiver = self._receiver
        try:
            if receiver is None:
                receiver = self.client.get_queue_receiver(
                    self.queue, receive_mode=ServiceBusReceiveMode.PEEK_LOCK, prefetch_count=0
                )
                # Open the link now: a short max_wait would otherwise also bound the link's
                # opening, and a receive could time out before it ever asked for a message.
                self._receiver = await receiver.__aenter__()
            received = await receiver.receive_messages(
                max_message_count=max_messages, max_wait_time=max_wait
            )
        except Exception as exc:
            # Drop the receiver: the next call reconnects (the caller backs off between calls).
            self._receiver = None
            if receiver is not None:
                await _quietly(receiver.close())
            raise translate_servicebus_error(exc, f"receive from {self.queue}") from exc
        return [self._delivery(message) for message in received]

    @staticmethod
    def _delivery(message: ServiceBusReceivedMessage) -> Delivery:
        return Delivery(
            body=str(message),
            message_id=str(message.message_id),
            # The AMQP header counts earlier failed deliveries; ours counts this one too.
            delivery_count=(message.delivery_count or 0) + 1,
            enqueued_at=message.enqueued_time_utc.timestamp() if message.enqueued_time_utc else 0.0,
            locked_until=message.locked_until_utc.timestamp() if message.locked_until_utc else 0.0,
            reply_to=message.reply_to,
            reply_to_session_id=message.reply_to_session_id,
            handle=message,
        )

    def _settling(self, delivery: Delivery) -> tuple[ServiceBusReceiver, ServiceBusReceivedMessage]:
        if self._receiver is None or not isinstance(delivery.handle, ServiceBusReceivedMessage):
            raise TransportLockLost(f"{self.queue}: the receiver of {delivery.message_id} is gone")
        return self._receiver, delivery.handle

    async def renew_lock(self, delivery: Delivery) -> float:
        receiver, message = self._settling(delivery)
        try:
            return (await receiver.renew_message_lock(message)).timestamp()
        except Exception as exc:
            raise translate_servicebus_error(exc, f"renew lock of {delivery.message_id}") from exc

    async def complete(self, delivery: Delivery) -> None:
        receiver, message = self._settling(delivery)
        await self._settle(receiver.complete_message(message), "complete", delivery)

    async def abandon(self, delivery: Delivery) -> None:
        receiver, message = self._settling(delivery)
        await self._settle(receiver.abandon_message(message), "abandon", delivery)

    async def dead_letter(self, delivery: Delivery, reason: str, description: str) -> None:
        receiver, message = self._settling(delivery)
        await self._settle(
            receiver.dead_letter_message(message, reason=reason, error_description=description),
            "dead-letter",
            delivery,
        )

    async def _settle(self, settling: Any, what: str, delivery: Delivery) -> None:
        try:
            await settling
        except Exception as exc:
            raise translate_servicebus_error(exc, f"{what} {delivery.message_id}") from exc

    async def send_outcome(self, request_id: str, body: str) -> None:
        # Always the outcomes queue and the request's own session: a request's ReplyTo is not
        # signed, so it is never trusted to choose where an outcome goes.
        await self._send(
            OUTCOMES_QUEUE,
            ServiceBusMessage(
                body,
                session_id=request_id,
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
        if self._receiver is not None:
            await _quietly(self._receiver.close())
            self._receiver = None
        await super().close()


async def _quietly(closing: Any) -> None:
    # Closing after a failure may fail again; the original error is what matters.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(closing, timeout=10)
