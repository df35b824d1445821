"""The messages, queue settings, errors and per-queue state of the in-memory Service Bus model.

`QueueConfig` is the subset of a Service Bus queue's properties the model emulates and
`StoredMessage` a message as the model keeps it; the exceptions are the ones its operations
raise. `Entity` is one queue or dead-letter sub-queue: its messages in sequence order, message
and session locks, session state and duplicate-detection history. This module holds data only:
it never applies time, takes a lock or looks inside a message body (`store.py` and the layers
above it do the first two, nothing does the third).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

DEAD_LETTER_SUFFIX = "/$DeadLetterQueue"
MAX_DELIVERY_COUNT_EXCEEDED = "MaxDeliveryCountExceeded"
TTL_EXPIRED = "TTLExpiredException"


@dataclass(frozen=True)
class QueueConfig:
    """How one queue behaves (the subset of Service Bus queue properties the model emulates)."""

    name: str
    requires_session: bool = False
    lock_duration: float = 60.0  # seconds
    max_delivery_count: int = 10
    default_ttl: float | None = None  # seconds; None: never expires
    duplicate_detection_window: float | None = None  # seconds; None: off
    dead_letter_on_expiration: bool = False


@dataclass
class StoredMessage:
    """One message as the broker keeps it; the fields below `raw` are set by the broker."""

    body: bytes
    message_id: str | None = None
    session_id: str | None = None
    reply_to: str | None = None
    reply_to_session_id: str | None = None
    correlation_id: str | None = None
    ttl: float | None = None  # the message's own time-to-live, seconds
    application_properties: dict[str, object] = field(default_factory=dict)
    raw: object = None  # opaque: the AMQP front-end keeps the original message here
    # set by the broker:
    sequence_number: int = 0
    enqueued_at: float = 0.0
    expires_at: float | None = None  # enqueued_at + min(ttl, queue default_ttl)
    delivery_count: int = 0  # failed deliveries so far (AMQP header semantics: 0 at first)
    lock_token: str | None = None  # a UUID string while locked
    locked_until: float | None = None
    dead_letter_reason: str | None = None
    dead_letter_description: str | None = None


class MessageLockLost(Exception):
    """Settling or renewing with a lock token that is unknown or whose lock has expired."""


class SessionCannotBeLocked(Exception):
    """The session is held by another receiver."""


class SessionLockLost(Exception):
    """The caller no longer holds the session lock (it expired or was released)."""


class UnknownQueue(Exception):
    """No queue (or dead-letter sub-queue) of that name."""


@dataclass
class SessionLock:
    owner: object
    locked_until: float


@dataclass
class Entity:
    """A queue or a dead-letter sub-queue: its messages in sequence order and its locks."""

    config: QueueConfig
    is_dead_letter: bool = False
    messages: dict[int, StoredMessage] = field(default_factory=dict)  # sorted by sequence
    locks: dict[str, int] = field(default_factory=dict)  # lock token -> sequence number
    sessions: dict[str, SessionLock] = field(default_factory=dict)
    session_states: dict[str, bytes] = field(default_factory=dict)
    seen_ids: dict[str, float] = field(default_factory=dict)  # message id -> forget after
    next_sequence: int = 1
    dead_letter: Entity | None = None

    def insert(self, message: StoredMessage) -> None:
        """Keep `messages` in sequence order (dead-lettered messages arrive out of order)."""
        last = next(reversed(self.messages), 0)
        self.messages[message.sequence_number] = message
        if message.sequence_number < last:
            self.messages = dict(sorted(self.messages.items()))


def copy_message(message: StoredMessage) -> StoredMessage:
    """A copy the caller may change without changing the stored message."""
    return dataclasses.replace(message, application_properties=dict(message.application_properties))


def expired(message: StoredMessage, now: float) -> bool:
    """Whether a message's time-to-live has run out at `now`."""
    return message.expires_at is not None and message.expires_at <= now
