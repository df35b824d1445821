"""What both in-process transports share: a `MemoryBroker`, its clock, sends and change waits.

A wait wakes when the broker reports a change (and at least every POLL_SECONDS, for what only
time changes: expiries, renewals). A send to a queue the broker does not know raises
TransportUnavailable, as a missing entity does on Service Bus. It is a test fake, not a product
transport: it never touches a network and never looks inside message bodies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from writeback.errors import TransportUnavailable
from writeback.transport.memory import MemoryBroker, StoredMessage, UnknownQueue

POLL_SECONDS = 0.05
OUTCOME_TTL = 300.0


class InProcess:
    """A transport endpoint on `broker`; the cloud and relay sides build on it."""

    def __init__(self, broker: MemoryBroker, clock: Callable[[], float] = time.time) -> None:
        self.broker = broker
        self._clock = clock

    def _send(self, queue: str, message: StoredMessage) -> None:
        try:
            self.broker.send(queue, message)
        except UnknownQueue as exc:
            raise TransportUnavailable(f"send to {queue}: no such queue") from exc

    async def _changed(self, timeout: float) -> None:
        """Return when the broker changes, or after `timeout` seconds (at most POLL_SECONDS).

        The broker calls its listeners on the thread that changed it, hence the thread-safe
        hand-over; the listener is registered only while waiting, so none outlives its loop.
        """
        loop = asyncio.get_running_loop()
        changed: asyncio.Future[None] = loop.create_future()

        def settle() -> None:
            if not changed.done():
                changed.set_result(None)

        def wake() -> None:
            loop.call_soon_threadsafe(settle)

        self.broker.add_listener(wake)
        try:
            await asyncio.wait({changed}, timeout=max(0.0, min(timeout, POLL_SECONDS)))
        finally:
            self.broker.remove_listener(wake)
            changed.cancel()

    async def close(self) -> None:
        return None
