"""Adoption of another cloud instance's reply session by the cloud's Service Bus transport.

`adopt` opens another instance's reply session through a client of its own that never retries:
the SDK retries a session held by another receiver three times with growing pauses (some 15 s),
and for adoption "held" is the everyday answer (that instance is alive), wanted at once. An
adopted session is drained for at most ADOPT_SECONDS, well within its lock (nothing renews it);
what is left is taken by the next sweep. A session whose lease is fresh (its instance is alive
and reopening it after a failure, see `writeback.transport.lease`) is left alone too. Each
outcome is handed on as the reply listener hands on its own (`listener.py`). `Adopter` is the
layer of `ServiceBusCloud` between the listener and the sender side (`cloud.py`); it never
adopts this instance's own session and never writes a lease.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver
from azure.servicebus.exceptions import ServiceBusServerBusyError, SessionCannotBeLockedError

from writeback.transport import OUTCOMES_QUEUE
from writeback.transport.lease import is_held
from writeback.transport.replies import Backoff
from writeback.transport.servicebus.bus import build_client, quietly, translate_servicebus_error
from writeback.transport.servicebus.listener import NO_KEEP_ALIVE, ReplyListener, as_seconds
from writeback.transport.settings import ServiceBusSettings

ADOPT_WAIT_SECONDS = 1.0  # an adopted session with nothing more for this long is drained
ADOPT_BUSY_TRIES = 5  # attempts to open an adopted session while the namespace is throttling
ADOPT_SECONDS = 10.0  # the longest an adopted session is held (its lock lasts 30 s in infra/)


class Adopter(ReplyListener):
    """A reply listener that can also drain other instances' reply sessions."""

    def __init__(
        self,
        settings: ServiceBusSettings,
        credential: AsyncTokenCredential | None,
        *,
        reply_session: str | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(settings, credential, reply_session=reply_session, **extra)
        self._adopter: ServiceBusClient | None = None

    async def adopt(self, session: str) -> int | None:
        if session == self.reply_session:
            return None  # ours: the listener serves it
        receiver = self._adopting_client().get_queue_receiver(
            OUTCOMES_QUEUE,
            session_id=session,
            max_wait_time=ADOPT_WAIT_SECONDS,
            prefetch_count=0,
            **NO_KEEP_ALIVE,
        )
        try:
            try:
                await self._open_throttled(receiver)
            except SessionCannotBeLockedError:
                return None  # its instance holds it: alive, and serving it itself
            session_lock = receiver.session
            if is_held(await session_lock.get_state(), as_seconds(session_lock.locked_until_utc)):
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

    async def close(self) -> None:
        await super().close()
        adopter, self._adopter = self._adopter, None
        if adopter is not None:
            await quietly(adopter.close())
