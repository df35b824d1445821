"""The reply session of the cloud's Service Bus transport: the listener that holds it open.

Opening a link costs the async SDK about half a second (it reads one frame per 50 ms sleep while
attaching), so nothing here opens a link per request. A background task holds a session
receiver on `writeback-outcomes`, session = this instance's `reply_session`, for the instance's
life: it receives one outcome at a time, hands it to the request's waiter by CorrelationId
(`Replies`), re-sends an orphan to its request's own session, completes it, and renews the
session lock well within the lock duration, writing its lease (`writeback.transport.lease`)
with each lock. When the session is lost (lock lost, connection dropped, the broker restarted)
the task reopens the same session after a growing pause; the outcomes wait in the session
meanwhile, so none is lost. An outcome without a usable CorrelationId is dead-lettered
(`outcome.uncorrelated`), never dropped silently. `ReplyListener` is the layer of
`ServiceBusCloud` below adoption (`adopter.py`) and the sender side (`cloud.py`); it never
sends a request and never touches another instance's session. Bodies are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import timedelta
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential
from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage
from azure.servicebus.aio import ServiceBusReceiver

from writeback.errors import TransportError
from writeback.transport import OUTCOMES_QUEUE
from writeback.transport.lease import lease
from writeback.transport.replies import (
    UNDECODABLE,
    UNDISPATCHABLE,
    Backoff,
    Delivered,
    DispatchTries,
    Replies,
    new_reply_session,
    renewal_due,
)
from writeback.transport.servicebus.bus import (
    CONTENT_TYPE,
    OUTCOME_TTL,
    Bus,
    quietly,
    translate_servicebus_error,
)
from writeback.transport.settings import ServiceBusSettings

log = logging.getLogger(__name__)
LISTEN_SECONDS = 5.0  # the longest single receive on the reply session
SWEEP_SECONDS = 1.0  # how often entries nobody waits for are looked at
UNCORRELATED = "outcome.uncorrelated"
# The SDK's keep-alive task sleeps in 1 s steps and a link's close waits for it; a receiver
# that is always receiving keeps its connection alive anyway. `keep_alive` is read by
# azure-servicebus 7.x's configuration but not documented: without it, closing is just slower.
NO_KEEP_ALIVE: dict[str, Any] = {"keep_alive": 0}


class ReplyListener(Bus):
    """The Service Bus client of a cloud instance with its reply session held open."""

    def __init__(
        self,
        settings: ServiceBusSettings,
        credential: AsyncTokenCredential | None,
        *,
        reply_session: str | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(settings, credential, **extra)
        self.reply_session = reply_session or new_reply_session()
        self.replies = Replies()
        self._tries = DispatchTries()
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._stopping = False
        self.reopen = Backoff()  # pauses between reopening a lost reply session

    def _listen(self) -> None:
        if self._listener is None or self._listener.done():
            self._stopping = False
            self._listener = asyncio.create_task(self._hold_reply_session())

    async def _hold_reply_session(self) -> None:
        """Open the reply session and serve it; reopen it after a pause whenever it fails.
        Its lease (see `lease`) is renewed with its lock and cleared when closing."""
        backoff = self.reopen
        while not self._stopping:
            receiver = self.client.get_queue_receiver(
                OUTCOMES_QUEUE, session_id=self.reply_session, prefetch_count=0, **NO_KEEP_ALIVE
            )
            try:
                await receiver.__aenter__()
                session = receiver.session
                await session.set_state(lease(as_seconds(session.locked_until_utc)))
                self._listening.set()
                backoff.reset()
                await self._serve(receiver)  # returns only when stopping
            except Exception as exc:
                error = translate_servicebus_error(exc, f"reply session {self.reply_session}")
                log.warning(
                    "reply_session_lost", extra={"session": self.reply_session, "error": str(error)}
                )
            finally:
                self._listening.clear()
                self._background(self._let_go(receiver, clear=self._stopping))
            if not self._stopping:
                await asyncio.sleep(backoff.next())

    async def _serve(self, receiver: ServiceBusReceiver) -> None:
        session = receiver.session
        renew_at = renewal_due(as_seconds(session.locked_until_utc), time.time())
        sweep_at = time.time() + SWEEP_SECONDS
        while not self._stopping:
            wait = min(LISTEN_SECONDS, max(0.05, renew_at - time.time()))
            for message in await receiver.receive_messages(max_message_count=1, max_wait_time=wait):
                await self._dispatch(receiver, message)
            now = time.time()
            if now >= sweep_at:
                await self._sweep()
                sweep_at = now + SWEEP_SECONDS
            if now >= renew_at:
                locked_until = as_seconds(await session.renew_lock())
                await session.set_state(lease(locked_until))
                renew_at = renewal_due(locked_until, time.time())

    @staticmethod
    async def _let_go(receiver: ServiceBusReceiver, *, clear: bool) -> None:
        """Close the reply session's receiver; closing cleanly, clear its lease first, so a
        sweep may adopt what is left in it at once."""
        if clear:
            await quietly(receiver.session.set_state(None))
        await quietly(receiver.close())

    async def _dispatch(
        self, receiver: ServiceBusReceiver, message: ServiceBusReceivedMessage
    ) -> bool:
        """Hand an outcome to its waiter or re-send it as an orphan, then complete it; False
        if it was not handed on: dead-lettered (no CorrelationId naming a request, a body that
        is not text, or MAX_DISPATCH_TRIES failed tries) or abandoned to be tried again."""
        request_id = message.correlation_id
        if not isinstance(request_id, str) or not request_id or len(request_id) > 128:
            await receiver.dead_letter_message(
                message, reason=UNCORRELATED, error_description="no CorrelationId naming a request"
            )
            return False
        try:
            body = str(message)
        except UnicodeDecodeError:
            # Any relay identity may send to the outcomes queue; bytes that are not text can
            # never become an outcome, so they are not tried again.
            await receiver.dead_letter_message(
                message, reason=UNDECODABLE, error_description="the body is not UTF-8 text"
            )
            return False
        sequence = message.sequence_number or 0
        try:
            if self.replies.deliver(request_id, body) is Delivered.ORPHAN:
                # Settled only once it is safe in the request's own session.
                await self._forward(request_id, body, _time_left(message))
        except TransportError as exc:
            await self._failed(receiver, message, type(exc).__name__)
            return False
        await receiver.complete_message(message)
        self._tries.forget(sequence)
        return True

    async def _failed(
        self, receiver: ServiceBusReceiver, message: ServiceBusReceivedMessage, error: str
    ) -> None:
        """One more failed try of an outcome: abandon it to try again after a pause, or, at
        the limit, dead-letter it (`DispatchTries` says why the broker's count is not used)."""
        sequence = message.sequence_number or 0
        tries = self._tries.failed(sequence)
        log.warning(
            "outcome_not_dispatched",
            extra={"session": receiver.session.session_id, "tries": tries, "error": error},
        )
        if tries >= self._tries.limit:
            self._tries.forget(sequence)
            await receiver.dead_letter_message(
                message,
                reason=UNDISPATCHABLE,
                error_description=f"{error} on each of {tries} tries to hand it on",
            )
            return
        await receiver.abandon_message(message)
        await asyncio.sleep(self._tries.pause(tries))

    async def _sweep(self) -> None:
        for request_id, bodies in self.replies.stale():
            for body in bodies:
                await self._forward(request_id, body, OUTCOME_TTL.total_seconds())
            self.replies.drop(request_id)

    async def _forward(self, request_id: str, body: str, ttl: float) -> None:
        """Re-send an outcome nobody here waits for to its request's own session."""
        await self._send(
            OUTCOMES_QUEUE,
            ServiceBusMessage(
                body,
                session_id=request_id,
                correlation_id=request_id,
                content_type=CONTENT_TYPE,
                time_to_live=timedelta(seconds=ttl),
            ),
        )

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        self._stopping = True
        # Python 3.11's asyncio.wait_for (inside the SDK) can swallow a cancellation that
        # races with its result: cancel again until the listener is gone (it also stops at
        # `_stopping`, within one receive).
        while listener is not None and not listener.done():
            listener.cancel()
            await asyncio.wait({listener}, timeout=1.0)
        if listener is not None and not listener.cancelled():
            with contextlib.suppress(Exception):
                listener.result()  # retrieved, so asyncio does not log it as never retrieved
        self.replies.close()
        await super().close()


def as_seconds(moment: Any) -> float:
    """A datetime from the SDK as Unix seconds (now, if the SDK had none)."""
    return float(moment.timestamp()) if moment is not None else time.time()


def _time_left(message: ServiceBusReceivedMessage) -> float:
    """What is left of an outcome's time-to-live, for its forwarded copy (at least 1 s)."""
    limit = OUTCOME_TTL.total_seconds()
    expires = message.expires_at_utc
    left = expires.timestamp() - time.time() if expires is not None else limit
    return max(1.0, min(limit, left))
