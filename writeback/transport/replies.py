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

An entry keeps every distinct body that arrives for its request, and a wait returns the first
its caller accepts (`accept`: the service verifies the relay's signature). So a forged or
unverifiable body that arrives first does not hide the real outcome behind it: the wait skips
it and goes on until its deadline. Past MAX_BODIES an entry takes no more; further bodies are
orphans, re-sent to the request's own session, where a status read skips what it refuses too.

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

MAX_BODIES = 8  # distinct bodies one entry keeps (a relay answers once; more means forgeries)
MAX_DISPATCH_TRIES = 3  # tries to hand on one outcome before it is dead-lettered
UNDISPATCHABLE = "outcome.undispatchable"
UNDECODABLE = "outcome.undecodable"


def new_reply_session() -> str:
    """A fresh reply session id for one cloud instance: `cloud-<32 hex digits>`."""
    return f"cloud-{uuid.uuid4().hex}"


class Delivered(enum.Enum):
    """What became of an outcome handed to `Replies.deliver`."""

    TO_WAITER = "to-waiter"  # its request's entry took it (a waiter has it, or will at once)
    DUPLICATE = "duplicate"  # its request's entry already has this very body
    ORPHAN = "orphan"  # nobody here expects it (or its entry is full): re-send it to the
    # request's own session


def accept_any(body: str) -> bool:
    """The `accept` of a wait that takes the first body (a transport's own tests)."""
    return True


@dataclass
class _Expected:
    changed: asyncio.Future[None]  # resolved (and replaced) whenever a body arrives
    expires_at: float
    bodies: list[str] = field(default_factory=list)
    waiters: int = 0
    closed: bool = False

    def wake(self) -> None:
        if not self.changed.done():
            self.changed.set_result(None)
        self.changed = asyncio.get_running_loop().create_future()


@dataclass
class Replies:
    """The requests this instance sent and is expecting outcomes for (see the module doc)."""

    clock: Callable[[], float] = time.time
    _expected: dict[str, _Expected] = field(default_factory=dict)

    def expect(self, request_id: str, expires_at: float) -> bool:
        """Register a request before it is sent; False if it was already registered."""
        if request_id in self._expected:
            return False
        changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._expected[request_id] = _Expected(changed, expires_at)
        return True

    def forget(self, request_id: str) -> None:
        """Its request was never sent: drop the entry unless somebody already waits on it."""
        expected = self._expected.get(request_id)
        if expected is not None and expected.waiters == 0:
            del self._expected[request_id]
            expected.changed.cancel()

    def expecting(self, request_id: str) -> bool:
        """Whether this instance sent the request and still expects its outcome here."""
        return request_id in self._expected

    def __len__(self) -> int:
        return len(self._expected)

    async def wait(
        self, request_id: str, deadline: float, accept: Callable[[str], bool] = accept_any
    ) -> str | None:
        """The first outcome of an expected request that `accept` takes (each body is offered
        once per wait), or None at `deadline` (wall-clock seconds).

        When the last waiter gives up, the entry goes: an outcome arriving later is an orphan,
        re-sent to the request's own session for a status read to find. Raises
        TransportUnavailable if the transport was closed meanwhile.
        """
        expected = self._expected[request_id]
        expected.waiters += 1
        try:
            offered = 0
            while True:
                for body in expected.bodies[offered:]:
                    offered += 1
                    if accept(body):
                        return body
                if expected.closed:
                    raise TransportUnavailable("the transport was closed")
                remaining = deadline - self.clock()
                if remaining <= 0:
                    return None
                # asyncio.wait, not wait_for: a timeout must not cancel what others share.
                await asyncio.wait({expected.changed}, timeout=remaining)
        finally:
            expected.waiters -= 1
            if expected.waiters == 0 and self._expected.get(request_id) is expected:
                del self._expected[request_id]

    def deliver(self, request_id: str, body: str) -> Delivered:
        """Hand an outcome received on the reply session to its request's entry."""
        expected = self._expected.get(request_id)
        if expected is None:
            return Delivered.ORPHAN
        if body in expected.bodies:
            return Delivered.DUPLICATE
        if len(expected.bodies) >= MAX_BODIES:
            return Delivered.ORPHAN
        expected.bodies.append(body)
        expected.wake()
        return Delivered.TO_WAITER

    def stale(self) -> list[tuple[str, list[str]]]:
        """The entries nobody waits for whose request expired, as (request id, the bodies it
        received). Re-send each to its request's own session, then `drop` the entry."""
        now = self.clock()
        return [
            (request_id, list(expected.bodies))
            for request_id, expected in self._expected.items()
            if not expected.waiters and expected.expires_at <= now
        ]

    def drop(self, request_id: str) -> None:
        """Forget an entry `stale` listed (its outcome, if any, was re-sent)."""
        expected = self._expected.pop(request_id, None)
        if expected is not None:
            expected.changed.cancel()

    def close(self) -> None:
        """The transport is closing: waiters fail with TransportUnavailable, entries go."""
        for expected in self._expected.values():
            expected.closed = True
            if not expected.changed.done():
                expected.changed.set_result(None)
        self._expected.clear()


@dataclass
class DispatchTries:
    """Failed tries to hand on each outcome of a reply session, counted here and not by the
    broker: Service Bus raises a message's delivery count only when its lock expires or it is
    abandoned, not when a session receiver closes, so a listener that reopens its session after
    a failure would meet the same outcome forever (until its time-to-live), with every outcome
    behind it waiting. After `limit` failed tries the caller dead-letters it. Keyed by the
    message's sequence number; at most `keep` entries are remembered (the oldest go first)."""

    limit: int = MAX_DISPATCH_TRIES
    keep: int = 1024
    _failed: dict[int, int] = field(default_factory=dict)

    def failed(self, sequence_number: int) -> int:
        """Count a failed try of one outcome; how many have failed so far (at `limit`,
        dead-letter it)."""
        tries = self._failed.pop(sequence_number, 0) + 1
        self._failed[sequence_number] = tries
        while len(self._failed) > self.keep:
            del self._failed[next(iter(self._failed))]
        return tries

    def forget(self, sequence_number: int) -> None:
        """The outcome was settled."""
        self._failed.pop(sequence_number, None)

    @staticmethod
    def pause(tries: int) -> float:
        """Seconds to wait before the next try of an outcome that failed `tries` times."""
        return min(2.0, 0.1 * 2.0 ** (tries - 1))


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
