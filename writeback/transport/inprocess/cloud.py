"""The cloud's side of the in-process transport (CloudTransport) on a `MemoryBroker`.

The same request/reply scheme as the Service Bus transport (`servicebus/cloud.py`): one reply
session per cloud instance, held by a background task that renews its lock and lease and hands
each outcome to its waiter by CorrelationId (`Replies`); orphans are re-sent to the request's
own session, where a wait this instance is not expecting looks; `adopt` drains another
instance's session unless it is held or its lease is fresh. Outcomes that cannot be handed on
are dead-lettered as the Service Bus transport does. A test fake: it never touches a network
and never looks inside bodies beyond decoding them as text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from writeback.errors import TransportError, TransportUnavailable
from writeback.transport import OUTCOMES_QUEUE, requests_queue
from writeback.transport.inprocess.base import OUTCOME_TTL, InProcess
from writeback.transport.lease import is_held, lease
from writeback.transport.memory import (
    MemoryBroker,
    MessageLockLost,
    SessionCannotBeLocked,
    SessionLockLost,
    StoredMessage,
    UnknownQueue,
)
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

log = logging.getLogger(__name__)
UNCORRELATED = "outcome.uncorrelated"
REFUSED = "outcome.refused"


class InProcessCloud(InProcess):
    """CloudTransport on a MemoryBroker."""

    def __init__(
        self,
        broker: MemoryBroker,
        clock: Callable[[], float] = time.time,
        *,
        reply_session: str | None = None,
    ) -> None:
        super().__init__(broker, clock)
        self.reply_session = reply_session or new_reply_session()
        self.replies = Replies(clock)
        self._tries = DispatchTries()
        self._owner = object()  # the holder of the reply session's lock in the model
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    async def start(self, domains: Iterable[str] = ()) -> None:
        self._listen()
        await self._listening.wait()

    async def send_request(
        self, domain: str, request_id: str, body: str, expires_at: float
    ) -> None:
        registered = self.replies.expect(request_id, expires_at)
        self._listen()
        try:
            self._send(
                requests_queue(domain),
                StoredMessage(
                    body=body.encode(),
                    message_id=request_id,
                    reply_to=OUTCOMES_QUEUE,
                    reply_to_session_id=self.reply_session,
                    ttl=max(1.0, expires_at - self._clock()),
                ),
            )
        except Exception:
            if registered:
                self.replies.forget(request_id)
            raise

    async def wait_for_outcome(
        self, request_id: str, deadline: float, accept: Callable[[str], bool] = accept_any
    ) -> str | None:
        if self.replies.expecting(request_id):
            return await self.replies.wait(request_id, deadline, accept)
        return await self._wait_on_request_session(request_id, deadline, accept)

    async def adopt(self, session: str) -> int | None:
        if session == self.reply_session:
            return None  # ours: the listener serves it
        owner = object()
        try:
            locked = self.broker.lock_session(OUTCOMES_QUEUE, session, owner)
        except SessionCannotBeLocked:
            return None
        except UnknownQueue as exc:
            raise TransportUnavailable(f"adopt session {session}: no such queue") from exc
        moved = 0
        try:
            state = self.broker.get_session_state(OUTCOMES_QUEUE, session)
            if locked is not None and is_held(state, locked[1]):
                return None  # its instance is alive and reopening it (see `lease`)
            self.broker.tick()
            while received := self.broker.receive(
                OUTCOMES_QUEUE, 16, session_id=session, owner=owner
            ):
                moved += sum(self._dispatch(message) for message in received)
        finally:
            self.broker.release_session(OUTCOMES_QUEUE, session, owner)
        return moved

    async def _wait_on_request_session(
        self, request_id: str, deadline: float, accept: Callable[[str], bool]
    ) -> str | None:
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
                    token, body = str(received[0].lock_token), received[0].body.decode()
                    if accept(body):
                        self.broker.complete(OUTCOMES_QUEUE, token)
                        return body
                    self.broker.dead_letter(
                        OUTCOMES_QUEUE, token, REFUSED, "the cloud could not verify it"
                    )
                    continue
                await self._changed(deadline - self._clock())
            return None
        finally:
            self.broker.release_session(OUTCOMES_QUEUE, request_id, owner)

    # -- the reply session ------------------------------------------------------------------
    def _listen(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._hold_reply_session())

    async def _hold_reply_session(self) -> None:
        """Lock the reply session and serve it; when the lock is lost, lock it again after a
        pause (its messages stay in the session meanwhile)."""
        backoff = Backoff()
        while True:
            try:
                locked = self.broker.lock_session(OUTCOMES_QUEUE, self.reply_session, self._owner)
                if locked is not None:
                    self._lease(locked[1])
                self._listening.set()
                backoff.reset()
                # A named session is always locked or refused: None only means "none available".
                await self._serve(locked[1] if locked else self._clock())
            except (
                SessionCannotBeLocked,
                SessionLockLost,
                MessageLockLost,
                UnknownQueue,
                TransportUnavailable,
            ) as exc:
                log.warning(
                    "reply_session_lost",
                    extra={"session": self.reply_session, "error": type(exc).__name__},
                )
            finally:
                self._listening.clear()
                self._release()
            await asyncio.sleep(backoff.next())

    def _lease(self, locked_until: float | None) -> None:
        """Write (or, with None, clear) this instance's lease on its reply session."""
        state = None if locked_until is None else lease(locked_until)
        self.broker.set_session_state(OUTCOMES_QUEUE, self.reply_session, state)

    def _release(self) -> None:
        # Its messages still locked (one being handled when this failed) become available again.
        with contextlib.suppress(UnknownQueue):
            self.broker.release_session(OUTCOMES_QUEUE, self.reply_session, self._owner)

    async def _serve(self, locked_until: float) -> None:
        renew_at = renewal_due(locked_until, self._clock())
        while True:
            self.broker.tick()
            for message in self.broker.receive(
                OUTCOMES_QUEUE, 16, session_id=self.reply_session, owner=self._owner
            ):
                self._dispatch(message)
            for request_id, bodies in self.replies.stale():
                for body in bodies:
                    self._forward(request_id, body, OUTCOME_TTL)
                self.replies.drop(request_id)
            if self._clock() >= renew_at:
                locked_until = self.broker.renew_session(
                    OUTCOMES_QUEUE, self.reply_session, self._owner
                )
                self._lease(locked_until)
                renew_at = renewal_due(locked_until, self._clock())
            await self._changed(renew_at - self._clock())

    def _dispatch(self, message: StoredMessage) -> bool:
        """Hand an outcome to its waiter or re-send it as an orphan, then complete it; False
        if it was not handed on (dead-lettered, or abandoned to be tried again), as the
        Service Bus transport does."""
        token = str(message.lock_token)
        request_id = message.correlation_id
        if not request_id or len(request_id) > 128:
            self.broker.dead_letter(
                OUTCOMES_QUEUE, token, UNCORRELATED, "no CorrelationId naming a request"
            )
            return False
        try:
            body = message.body.decode()
        except UnicodeDecodeError:
            self.broker.dead_letter(
                OUTCOMES_QUEUE, token, UNDECODABLE, "the body is not UTF-8 text"
            )
            return False
        try:
            if self.replies.deliver(request_id, body) is Delivered.ORPHAN:
                left = (message.expires_at or self._clock() + OUTCOME_TTL) - self._clock()
                self._forward(request_id, body, max(1.0, left))
        except TransportError as exc:
            tries = self._tries.failed(message.sequence_number)
            if tries >= self._tries.limit:
                self._tries.forget(message.sequence_number)
                description = f"{type(exc).__name__} on each of {tries} tries to hand it on"
                self.broker.dead_letter(OUTCOMES_QUEUE, token, UNDISPATCHABLE, description)
            else:
                self.broker.abandon(OUTCOMES_QUEUE, token)
            return False
        self.broker.complete(OUTCOMES_QUEUE, token)
        self._tries.forget(message.sequence_number)
        return True

    def _forward(self, request_id: str, body: str, ttl: float) -> None:
        """Re-send an outcome nobody here waits for to its request's own session."""
        self._send(
            OUTCOMES_QUEUE,
            StoredMessage(
                body=body.encode(), session_id=request_id, correlation_id=request_id, ttl=ttl
            ),
        )

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            with contextlib.suppress(UnknownQueue):
                self._lease(None)  # closing cleanly: what is left may be adopted at once
        self._release()
        self.replies.close()
