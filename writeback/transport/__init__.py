"""The wire between the two sides: requests to a domain's relays, outcomes back on a session.

Queues: `writeback-requests-<domain>` (one per domain, duplicate detection on, peek-lock),
`writeback-outcomes` (sessions) and `writeback-heartbeats`. Request/reply follows Service Bus's
request-response pattern with one session per cloud instance: each instance holds its own reply
session (`cloud-<uuid>`) open for its lifetime, signs it into every request it sends, and the
relay answers on that session with CorrelationId = request id, so one open receiver serves every
concurrent caller of the instance (opening a session receiver per request costs half a second
in the SDK). An outcome that arrives after its caller stopped waiting is re-sent by the instance
to the request's own session (session id = request id), which is also where a relay answers a
request that names no reply session; a status read for a request looks there. An instance that
dies leaves the outcomes of its requests in flight in its reply session; another instance
`adopt`s that session (it can lock it only once nobody holds it) and re-sends them to their
requests' own sessions the same way, so none is lost. Bodies are the
signed tokens of `writeback.protocol.messages` / `writeback.sealing`; the transport never looks
inside them and must never log them. Two implementations obey one contract
(tests/integration/test_transport.py): `servicebus` on the azure-servicebus SDK, and `inprocess`
on the `memory` queue model for unit tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

OUTCOMES_QUEUE = "writeback-outcomes"
HEARTBEATS_QUEUE = "writeback-heartbeats"
REQUESTS_PREFIX = "writeback-requests-"
# The longest DeadLetterReason / DeadLetterErrorDescription Service Bus takes: the Azure SDKs
# refuse longer ones before sending (Azure.Messaging.ServiceBus
# `Constants.MaxDeadLetterReasonLength`, @azure/service-bus `maxDeadLetterReasonLength`: 4096).
MAX_DEAD_LETTER_TEXT = 4096
# The lock duration infra/ gives the request queues (PT30S), used where nothing says otherwise.
LOCK_SECONDS = 30.0


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

    `locked_until` and `enqueued_at` are the service's clock, which the local one may not match;
    time the lock with `received_at` (this host's monotonic clock, when it was received) and
    `lock_seconds` (the queue's lock duration), as Service Bus counts it from delivery.
    """

    body: str = field(repr=False)
    message_id: str
    delivery_count: int
    enqueued_at: float
    locked_until: float
    reply_to: str | None
    reply_to_session_id: str | None
    handle: object = field(repr=False, compare=False, default=None)
    lock_seconds: float = LOCK_SECONDS
    received_at: float = field(default_factory=time.monotonic, compare=False)


class CloudTransport(Protocol):
    """What the cloud side needs: send a request, wait for its outcome."""

    @property
    def reply_session(self) -> str:
        """This instance's session on `writeback-outcomes`; the service signs it into every
        request as the place to answer."""

    async def start(self, domains: Iterable[str] = ()) -> None:
        """Warm up (optional): open the reply session's receiver and the senders to `domains`'
        queues, returning once they are open. `send_request` starts listening by itself."""

    async def send_request(
        self, domain: str, request_id: str, body: str, expires_at: float
    ) -> None:
        """Send to the domain's queue: MessageId = request id, TTL up to `expires_at`, ReplyTo
        `writeback-outcomes` and ReplyToSessionId = `reply_session` (informative only: the
        relay answers where the signed request says). The request is registered as expected
        before it is sent, so its outcome can never arrive unexpected."""

    async def wait_for_outcome(
        self, request_id: str, deadline: float, accept: Callable[[str], bool] = ...
    ) -> str | None:
        """The first outcome of `request_id` that `accept` takes (by default, the first), or
        None if none arrived by `deadline` (wall-clock). The transport never looks inside a
        body: `accept` (the service's signature check) does, and a body it refuses is skipped,
        never returned, and the wait goes on.

        For a request this instance sent, the outcome comes through the reply session; several
        waits for one request all get it. Otherwise (a status read for a request another
        instance sent, or this instance's after its wait ended) the request's own session is
        read, where an outcome that arrived after every wait for it ended is kept (until its
        time-to-live) for the next one; a body refused there is dead-lettered
        (`outcome.refused`)."""

    async def adopt(self, session: str) -> int | None:
        """Take over another instance's reply session if nobody holds it any more: re-send
        each outcome in it to its request's own session (as an orphan of this instance's own
        is), complete it, and return how many were re-sent. None, within about a second, when
        the session is held (its instance is alive and serves it itself), its instance's lease
        is fresh (it is reopening it: `writeback.transport.lease`), or it is this instance's
        own. An outcome naming no request is dead-lettered, as on the own session.
        Raises TransportError if the session could not be read."""

    async def close(self) -> None:
        """Stop listening and close everything; waits still running raise TransportError."""


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

    async def send_outcome(self, request_id: str, body: str, session: str) -> None:
        """Answer on the outcomes queue: SessionId = `session` (the verified request's signed
        reply session, or its id), CorrelationId = `request_id`. Never a session taken from the
        message's unsigned ReplyToSessionId."""

    async def send_heartbeat(self, body: str) -> None: ...

    async def close(self) -> None: ...
