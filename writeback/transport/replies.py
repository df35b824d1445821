"""The outcomes a cloud instance waits for on its own reply session, matched to their waiters.

A cloud instance listens on one long-lived session of `writeback-outcomes` (its reply session)
and sends every request with that session signed in as the place to answer; each outcome says
which request it answers in its CorrelationId. `Replies` keeps one entry per request this
instance sent: `expect` registers it before the request is sent (so an outcome can never arrive
unexpected), `wait` awaits it until a deadline (several waiters share one entry), and
`deliver` hands an outcome the listener received to its entry. An outcome nobody here expects
any more (the wait ended, the caller was told to poll) is an orphan: the listener re-sends it to
the request's own session, where a status read on any instance finds it. Entries nobody waits
for are dropped once their request expired (`stale`, `drop`), so nothing grows without bound.

Transport-neutral and synchronous apart from `wait`; it never looks inside outcome bodies.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from writeback.errors import TransportUnavailable


def new_reply_session() -> str:
    """A fresh reply session id for one cloud instance: `cloud-<32 hex digits>`."""
    return f"cloud-{uuid.uuid4().hex}"


class Delivered(enum.Enum):
    """What became of an outcome handed to `Replies.deliver`."""

    TO_WAITER = "to-waiter"  # its request's entry took it (a waiter has it, or will at once)
    DUPLICATE = "duplicate"  # its request already had an outcome: the same one, sent again
    ORPHAN = "orphan"  # nobody here expects it: re-send it to the request's own session


@dataclass
class _Expected:
    future: asyncio.Future[str]
    expires_at: float
    waiters: int = 0


@dataclass
class Replies:
    """The requests this instance sent and is expecting outcomes for (see the module doc)."""

    clock: Callable[[], float] = time.time
    _expected: dict[str, _Expected] = field(default_factory=dict)

    def expect(self, request_id: str, expires_at: float) -> bool:
        """Register a request before it is sent; False if it was already registered."""
        if request_id in self._expected:
            return False
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._expected[request_id] = _Expected(future, expires_at)
        return True

    def forget(self, request_id: str) -> None:
        """Its request was never sent: drop the entry unless somebody already waits on it."""
        expected = self._expected.get(request_id)
        if expected is not None and expected.waiters == 0:
            del self._expected[request_id]
            expected.future.cancel()

    def expecting(self, request_id: str) -> bool:
        """Whether this instance sent the request and still expects its outcome here."""
        return request_id in self._expected

    def __len__(self) -> int:
        return len(self._expected)

    async def wait(self, request_id: str, deadline: float) -> str | None:
        """The outcome of an expected request, or None at `deadline` (wall-clock seconds).

        When the last waiter gives up, the entry goes: an outcome arriving later is an orphan,
        re-sent to the request's own session for a status read to find. Raises
        TransportUnavailable if the transport was closed meanwhile.
        """
        expected = self._expected[request_id]
        expected.waiters += 1
        try:
            remaining = deadline - self.clock()
            if remaining > 0 and not expected.future.done():
                # asyncio.wait, not wait_for: a timeout must not cancel the entry others share.
                await asyncio.wait({expected.future}, timeout=remaining)
        finally:
            expected.waiters -= 1
            if expected.waiters == 0 and self._expected.get(request_id) is expected:
                del self._expected[request_id]
        if expected.future.done() and not expected.future.cancelled():
            return expected.future.result()  # raises what close() set
        return None

    def deliver(self, request_id: str, body: str) -> Delivered:
        """Hand an outcome received on the reply session to its request's entry."""
        expected = self._expected.get(request_id)
        if expected is None:
            return Delivered.ORPHAN
        if expected.future.done():
            # Outcomes are journaled by the relay: a second one for a request is the same
            # answer sent again (a redelivered request), never news.
            return Delivered.DUPLICATE
        expected.future.set_result(body)
        return Delivered.TO_WAITER

    def stale(self) -> list[tuple[str, str | None]]:
        """The entries nobody waits for whose request expired, as (request id, the outcome it
        received or None). Re-send each outcome to its request's own session, then `drop` it."""
        now = self.clock()
        found: list[tuple[str, str | None]] = []
        for request_id, expected in self._expected.items():
            if expected.waiters or expected.expires_at > now:
                continue
            future = expected.future
            kept = future.done() and not future.cancelled() and future.exception() is None
            found.append((request_id, future.result() if kept else None))
        return found

    def drop(self, request_id: str) -> None:
        """Forget an entry `stale` listed (its outcome, if any, was re-sent)."""
        expected = self._expected.pop(request_id, None)
        if expected is not None:
            expected.future.cancel()

    def close(self) -> None:
        """The transport is closing: waiters fail with TransportUnavailable, entries go."""
        for expected in self._expected.values():
            if expected.future.done():
                continue
            if expected.waiters:
                expected.future.set_exception(TransportUnavailable("the transport was closed"))
            else:
                expected.future.cancel()
        self._expected.clear()


@dataclass
class Backoff:
    """Pauses between attempts to reopen the reply session: `first`, doubling up to `most`,
    with +-20% jitter so instances that lost the broker together do not return together."""

    first: float = 0.5
    most: float = 30.0
    _pause: float = 0.0

    def reset(self) -> None:
        self._pause = 0.0

    def next(self) -> float:
        self._pause = min(self.most, self._pause * 2 if self._pause else self.first)
        return self._pause * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not a secret


def renewal_due(locked_until: float, now: float) -> float:
    """When to renew a session lock that lasts until `locked_until`: halfway there, at least
    0.5 s and at most 30 s from now (the lock's end is the broker's clock, so a skewed local
    clock must neither make renewals spin nor let a 60 s lock lapse)."""
    return now + min(30.0, max(0.5, (locked_until - now) / 2))
