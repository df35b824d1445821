"""The wire between the two sides: requests to a domain's relays, outcomes back on a session.

Queues: `writeback-requests-<domain>` (one per domain, duplicate detection on, peek-lock),
`writeback-outcomes` (sessions: one session per request id, so each waiting caller receives only
its own outcome) and `writeback-heartbeats`. Bodies are the signed tokens of
`writeback.protocol.messages` / `writeback.sealing`; the transport never looks inside them and
must never log them. Two implementations obey one contract (tests/integration/test_transport.py):
`servicebus.ServiceBusTransport` on the azure-servicebus SDK, and `memory.MemoryTransport` for
unit tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

OUTCOMES_QUEUE = "writeback-outcomes"
HEARTBEATS_QUEUE = "writeback-heartbeats"
REQUESTS_PREFIX = "writeback-requests-"


def requests_queue(domain: str) -> str:
    """The request queue of a domain: `writeback-requests-corp.example.com`.

    Service Bus queue names allow letters, digits, '.', '-', '_' and '/', so the domain name is
    used as it is (lower case).
    """
    return REQUESTS_PREFIX + domain.lower()


@dataclass(frozen=True)
class Delivery:
    """One request as a relay received it, locked until settled or until the lock expires.

    `delivery_count` counts this delivery too: 1 the first time, 2 after a lock expired or the
    message was abandoned once. `handle` is the implementation's own reference for settlement.
    """

    body: str = field(repr=False)
    message_id: str
    delivery_count: int
    enqueued_at: float
    locked_until: float
    reply_to: str | None
    reply_to_session_id: str | None
    handle: object = field(repr=False, compare=False, default=None)


class CloudTransport(Protocol):
    """What the cloud side needs: send a request, wait for its outcome."""

    async def send_request(
        self, domain: str, request_id: str, body: str, expires_at: float
    ) -> None:
        """Send to the domain's queue: MessageId = request id, TTL up to `expires_at`, the reply
        to `writeback-outcomes` on session = request id."""

    async def wait_for_outcome(self, request_id: str, deadline: float) -> str | None:
        """The outcome body sent on session `request_id`, or None if none arrived by `deadline`
        (wall-clock seconds). An outcome arriving later is never returned to anybody else."""

    async def close(self) -> None: ...


class RelayTransport(Protocol):
    """What a relay needs: receive its domain's requests, settle them, answer, heartbeat."""

    async def receive(self, max_messages: int, max_wait: float) -> list[Delivery]:
        """Up to `max_messages` requests, peek-locked; an empty list after `max_wait` seconds."""

    async def renew_lock(self, delivery: Delivery) -> float:
        """Extend the lock while the request is being applied; the new locked-until time."""

    async def complete(self, delivery: Delivery) -> None:
        """Done: remove the request (after its outcome was sent)."""

    async def abandon(self, delivery: Delivery) -> None:
        """Transient failure: release the lock so the request is delivered again."""

    async def dead_letter(self, delivery: Delivery, reason: str, description: str) -> None:
        """The request can never be processed; `reason` and `description` hold no secret."""

    async def send_outcome(self, request_id: str, body: str) -> None:
        """Answer on the outcomes queue, session = the (verified) request id."""

    async def send_heartbeat(self, body: str) -> None: ...

    async def close(self) -> None: ...
