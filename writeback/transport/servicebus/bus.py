"""What both sides share on Service Bus: the client, senders, error translation, the probe.

An SDK client is built lazily from the settings (a namespace with an Entra credential, or a
connection string); a sender per queue is opened on first use and reused, one send at a time.
`translate_servicebus_error` is the one conversion from azure-servicebus exceptions to ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import timedelta
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential
from azure.servicebus import ServiceBusMessage
from azure.servicebus import exceptions as sb
from azure.servicebus.aio import ServiceBusClient, ServiceBusSender

from writeback.errors import TransportError, TransportLockLost, TransportUnavailable
from writeback.transport import HEARTBEATS_QUEUE, OUTCOMES_QUEUE, requests_queue
from writeback.transport.settings import ServiceBusSettings

# Service Bus force-detaches a link nobody sent on for 10 minutes (amqp:link:detach-forced;
# https://learn.microsoft.com/azure/service-bus-messaging/service-bus-amqp-troubleshoot), and the
# next send through it pays for the detach plus the SDK's retry pause. A sender idle this long
# is closed and opened afresh before it is used, so no send ever meets a detached link.
SENDER_REFRESH_SECONDS = 540.0
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
    sb.SessionCannotBeLockedError,
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


class Bus:
    """A lazily built client and one reusable sender per queue."""

    def __init__(
        self, settings: ServiceBusSettings, credential: AsyncTokenCredential | None, **extra: Any
    ) -> None:
        self._settings = settings
        self._credential = credential
        self._extra = extra
        self._client: ServiceBusClient | None = None
        self._senders: dict[str, ServiceBusSender] = {}
        self._sent_at: dict[str, float] = {}  # monotonic: when each sender was last used
        self.sender_refresh_seconds = SENDER_REFRESH_SECONDS
        self._send_locks: dict[str, asyncio.Lock] = {}
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def client(self) -> ServiceBusClient:
        if self._client is None:
            self._client = build_client(self._settings, self._credential, **self._extra)
        return self._client

    async def _open_sender(self, queue: str) -> ServiceBusSender:
        """The queue's sender, its link opened (call with the queue's send lock held); one
        idle for `sender_refresh_seconds` is replaced before Service Bus would detach it."""
        sender = self._senders.get(queue)
        idle = time.monotonic() - self._sent_at.get(queue, time.monotonic())
        if sender is not None and idle >= self.sender_refresh_seconds:
            del self._senders[queue]
            self._background(sender.close())
            sender = None
        if sender is None:
            sender = self.client.get_queue_sender(queue)
            try:
                await sender.__aenter__()
            except Exception as exc:
                await quietly(sender.close())
                raise translate_servicebus_error(exc, f"open sender to {queue}") from exc
            self._senders[queue] = sender
            self._sent_at[queue] = time.monotonic()
        return sender

    async def warm(self, queue: str) -> None:
        """Open the queue's sender now, so the first send does not pay for it."""
        async with self._send_locks.setdefault(queue, asyncio.Lock()):
            await self._open_sender(queue)

    async def _send(self, queue: str, message: ServiceBusMessage) -> None:
        # An SDK sender is not safe for concurrent use: one send at a time per queue (a send
        # takes milliseconds once the link is open; opening it twice at once breaks it).
        async with self._send_locks.setdefault(queue, asyncio.Lock()):
            sender = await self._open_sender(queue)
            try:
                await sender.send_messages(message)
                self._sent_at[queue] = time.monotonic()
            except Exception as exc:
                # A broken sender is rebuilt on the next send (the SDK retries within a send).
                self._senders.pop(queue, None)
                await quietly(sender.close())
                raise translate_servicebus_error(exc, f"send to {queue}") from exc

    def _background(self, closing: Any) -> None:
        """Close a link without making anybody wait for it (`close` waits for them all)."""
        task = asyncio.create_task(quietly(closing))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=15)
        for sender in self._senders.values():
            await quietly(sender.close())
        self._senders.clear()
        if self._client is not None:
            await quietly(self._client.close())
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


async def quietly(closing: Any) -> None:
    """Await a close, ignoring its failure and giving up after 10 s."""
    # Closing after a failure may fail again; the original error is what matters.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(closing, timeout=10)
