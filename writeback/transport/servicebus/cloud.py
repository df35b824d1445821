"""The cloud's side of the Service Bus transport (CloudTransport): one reply session per instance.

Opening a link costs the async SDK about half a second (it reads one frame per 50 ms sleep while
attaching), so nothing here opens a link per request. A background task holds a session
receiver on `writeback-outcomes`, session = this instance's `reply_session`, for the instance's
life: it receives one outcome at a time, hands it to the request's waiter by CorrelationId
(`Replies`), re-sends an orphan to its request's own session, completes it, and renews the
session lock well within the lock duration. When the session is lost (lock lost, connection
dropped, the broker restarted) the task reopens the same session after a growing pause; the
outcomes wait in the session meanwhile, so none is lost. Status reads for requests this
instance is not waiting for open a short-lived receiver on the request's own session.

`adopt` opens another instance's reply session through a client of its own that never retries:
the SDK retries a session held by another receiver three times with growing pauses (some 15 s),
and for adoption "held" is the everyday answer (that instance is alive), wanted at once. An
adopted session is drained for at most ADOPT_SECONDS, well within its lock (nothing renews it);
what is left is taken by the next sweep. A session whose lease is fresh (its instance is alive
and reopening it after a failure, see `writeback.transport.lease`) is left alone too.

Failures: a request that cannot be sent raises TransportError and is not expected any more;
while the reply session is down, waits run to their deadline (the outcome is kept in the
session and reaches a later wait or, as an orphan, the request's session); an outcome without a
usable CorrelationId is dead-lettered (`outcome.uncorrelated`), never dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential
from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver
from azure.servicebus.exceptions import ServiceBusServerBusyError, SessionCannotBeLockedError

from writeback.errors import TransportError, TransportUnavailable
from writeback.transport import OUTCOMES_QUEUE, requests_queue
from writeback.transport.lease import is_held, lease
from writeback.transport.replies import (
    UNDECODABLE,
    UNDISPATCHABLE,
    Backoff,
    Delivered,
    DispatchTries,
    Replies,
    accept_any,
    new_reply_session,
    renewal_due,
)
from writeback.transport.servicebus.bus import (
    CONTENT_TYPE,
    OUTCOME_TTL,
    Bus,
    build_client,
    quietly,
    translate_servicebus_error,
)
from writeback.transport.settings import ServiceBusSettings

log = logging.getLogger(__name__)
LISTEN_SECONDS = 5.0  # the longest single receive on the reply session
SWEEP_SECONDS = 1.0  # how often entries nobody waits for are looked at
ADOPT_WAIT_SECONDS = 1.0  # an adopted session with nothing more for this long is drained
ADOPT_BUSY_TRIES = 5  # attempts to open an adopted session while the namespace is throttling
ADOPT_SECONDS = 10.0  # the longest an adopted session is held (its lock lasts 30 s in infra/)
UNCORRELATED = "outcome.uncorrelated"
REFUSED = "outcome.refused"
# The SDK's keep-alive task sleeps in 1 s steps and a link's close waits for it; a receiver
# that is always receiving keeps its connection alive anyway. `keep_alive` is read by
# azure-servicebus 7.x's configuration but not documented: without it, closing is just slower.
_NO_KEEP_ALIVE: dict[str, Any] = {"keep_alive": 0}


class ServiceBusCloud(Bus):
    """The cloud side of the transport (CloudTransport)."""

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
        self._adopter: ServiceBusClient | None = None
        self.reopen = Backoff()  # pauses between reopening a lost reply session

    async def start(self, domains: Iterable[str] = (), timeout: float = 30.0) -> None:
        self._listen()
        opening = [self.warm(requests_queue(domain)) for domain in domains]
        try:
            await asyncio.wait_for(asyncio.gather(self._listening.wait(), *opening), timeout)
        except TimeoutError as exc:
            raise TransportUnavailable(
                f"reply session {self.reply_session}: not open after {timeout:.0f}s"
            ) from exc

    async def send_request(
        self, domain: str, request_id: str, body: str, expires_at: float
    ) -> None:
        registered = self.replies.expect(request_id, expires_at)  # before it can be answered
        self._listen()
        ttl = max(1.0, expires_at - time.time())
        message = ServiceBusMessage(
            body,
            message_id=request_id,
            content_type=CONTENT_TYPE,
            time_to_live=timedelta(seconds=ttl),
            reply_to=OUTCOMES_QUEUE,
            reply_to_session_id=self.reply_session,
        )
        try:
            await self._send(requests_queue(domain), message)
        except BaseException:
            if registered:
                self.replies.forget(request_id)
            raise

    async def wait_for_outcome(
        self, request_id: str, deadline: float, accept: Callable[[str], bool] = accept_any
    ) -> str | None:
        if self.replies.expecting(request_id):
            return await self.replies.wait(request_id, deadline, accept)
        return await self._wait_on_request_session(request_id, deadline, accept)

    async def _wait_on_request_session(
        self, request_id: str, deadline: float, accept: Callable[[str], bool]
    ) -> str | None:
        remaining = deadline - time.time()
        if remaining <= 0:
            return None
        receiver = self.client.get_queue_receiver(
            OUTCOMES_QUEUE,
            session_id=request_id,
            max_wait_time=remaining,
            prefetch_count=1,
            **_NO_KEEP_ALIVE,
        )
        try:
            await receiver.__aenter__()
            while (remaining := deadline - time.time()) > 0:
                received = await receiver.receive_messages(
                    max_message_count=1, max_wait_time=remaining
                )
                if received:
                    body = str(received[0])
                    if accept(body):
                        await receiver.complete_message(received[0])
                        return body
                    await receiver.dead_letter_message(
                        received[0],
                        reason=REFUSED,
                        error_description="the cloud could not verify it",
                    )
        except Exception as exc:
            raise translate_servicebus_error(exc, f"wait for outcome {request_id}") from exc
        finally:
            # Answer the caller first; the close (a round trip of its own) follows.
            self._background(receiver.close())
        return None

    # -- another instance's reply session -----------------------------------------------------
    async def adopt(self, session: str) -> int | None:
        if session == self.reply_session:
            return None  # ours: the listener serves it
        receiver = self._adopting_client().get_queue_receiver(
            OUTCOMES_QUEUE,
            session_id=session,
            max_wait_time=ADOPT_WAIT_SECONDS,
            prefetch_count=0,
            **_NO_KEEP_ALIVE,
        )
        try:
            try:
                await self._open_throttled(receiver)
            except SessionCannotBeLockedError:
                return None  # its instance holds it: alive, and serving it itself
            session_lock = receiver.session
            if is_held(await session_lock.get_state(), _seconds(session_lock.locked_until_utc)):
                return None  # its instance is alive and reopening it (see `lease`)
            return await self._drain(receiver, time.monotonic() + ADOPT_SECONDS)
        except Exception as exc:
            raise translate_servicebus_error(exc, f"adopt session {session}") from exc
        finally:
            self._background(receiver.close())

    @staticmethod
    async def _open_throttled(receiver: ServiceBusReceiver) -> None:
        """Open the adopter's receiver, retrying only throttling (`server-busy`) with backoff:
        its client retries nothing else (see the module docstring), and a Standard namespace
        throttles beyond 1,000 operations a second."""
        backoff = Backoff(first=0.2, most=2.0)
        for _ in range(ADOPT_BUSY_TRIES - 1):
            try:
                await receiver.__aenter__()
                return
            except ServiceBusServerBusyError:
                await asyncio.sleep(backoff.next())
        await receiver.__aenter__()

    async def _drain(self, receiver: ServiceBusReceiver, until: float) -> int:
        moved = 0
        while time.monotonic() < until:
            received = await receiver.receive_messages(
                max_message_count=16, max_wait_time=ADOPT_WAIT_SECONDS
            )
            if not received:
                break
            for message in received:
                moved += await self._dispatch(receiver, message)
        return moved

    def _adopting_client(self) -> ServiceBusClient:
        """The client `adopt` uses: the transport's settings, but no retries (see the module
        docstring); built on first use and kept for the next sweep."""
        if self._adopter is None:
            self._adopter = build_client(
                self._settings, self._credential, **{**self._extra, "retry_total": 0}
            )
        return self._adopter

    # -- the reply session ------------------------------------------------------------------
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
                OUTCOMES_QUEUE, session_id=self.reply_session, prefetch_count=0, **_NO_KEEP_ALIVE
            )
            try:
                await receiver.__aenter__()
                session = receiver.session
                await session.set_state(lease(_seconds(session.locked_until_utc)))
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
        renew_at = renewal_due(_seconds(session.locked_until_utc), time.time())
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
                locked_until = _seconds(await session.renew_lock())
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
        adopter, self._adopter = self._adopter, None
        if adopter is not None:
            await quietly(adopter.close())


def _seconds(moment: Any) -> float:
    """A datetime from the SDK as Unix seconds (now, if the SDK had none)."""
    return float(moment.timestamp()) if moment is not None else time.time()


def _time_left(message: ServiceBusReceivedMessage) -> float:
    """What is left of an outcome's time-to-live, for its forwarded copy (at least 1 s)."""
    limit = OUTCOME_TTL.total_seconds()
    expires = message.expires_at_utc
    left = expires.timestamp() - time.time() if expires is not None else limit
    return max(1.0, min(limit, left))
