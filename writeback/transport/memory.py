"""A Service Bus queue model in plain Python, for development and tests only.

`MemoryBroker` keeps queues the way Azure Service Bus does as far as this project relies on it:
peek-lock with lock tokens and lock expiry, delivery counts and a maximum delivery count,
dead-letter sub-queues (`<queue>/$DeadLetterQueue`) with reason and description, message
time-to-live (per queue and per message, the smaller wins), duplicate detection on MessageId
within a window, and sessions (exclusive session locks, next available session, session state).
It is used twice: behind the local AMQP broker in `devstack.servicebus`, which the unmodified
azure-servicebus SDK talks to, and directly by the in-memory transport in unit tests.

It is a model, not a product: production always uses Azure Service Bus. It must never be used to
carry real requests, it keeps everything in memory (nothing survives a restart) and it enforces
no authorisation. It never looks inside message bodies and never logs them.

Time comes from the injected `clock` (wall-clock seconds), so tests drive it by hand. Time is
applied lazily at the start of every operation and by `tick()`, which also tells a caller when
the next lock or message expires. Every method is thread-safe: one re-entrant lock guards all
state. `changed` is a `threading.Condition` on that lock, notified whenever messages may have
become available (send, abandon, release, lock or session expiry) or state otherwise changed,
so a blocking receiver can wait on it; `add_listener` registers callbacks for the same moments
(called outside the lock), which is how the AMQP front-end wakes its event loop.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from writeback.transport import MAX_DEAD_LETTER_TEXT

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
class _SessionLock:
    owner: object
    locked_until: float


@dataclass
class _Entity:
    """A queue or a dead-letter sub-queue: its messages in sequence order and its locks."""

    config: QueueConfig
    is_dead_letter: bool = False
    messages: dict[int, StoredMessage] = field(default_factory=dict)  # sorted by sequence
    locks: dict[str, int] = field(default_factory=dict)  # lock token -> sequence number
    sessions: dict[str, _SessionLock] = field(default_factory=dict)
    session_states: dict[str, bytes] = field(default_factory=dict)
    seen_ids: dict[str, float] = field(default_factory=dict)  # message id -> forget after
    next_sequence: int = 1
    dead_letter: _Entity | None = None

    def insert(self, message: StoredMessage) -> None:
        """Keep `messages` in sequence order (dead-lettered messages arrive out of order)."""
        last = next(reversed(self.messages), 0)
        self.messages[message.sequence_number] = message
        if message.sequence_number < last:
            self.messages = dict(sorted(self.messages.items()))


def _copy(message: StoredMessage) -> StoredMessage:
    return dataclasses.replace(message, application_properties=dict(message.application_properties))


class MemoryBroker:
    """Queues with Service Bus semantics, in memory; see the module docstring."""

    def __init__(
        self, queues: Iterable[QueueConfig], clock: Callable[[], float] = time.time
    ) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self.changed = threading.Condition(self._lock)
        self._listeners: list[Callable[[], None]] = []
        self._dirty = False  # set under the lock when waiters and listeners must be told
        # The earliest time something may be due (a lock, an expiry, a duplicate id to forget).
        # Time is applied by a scan of every message only once this passes, so a long queue
        # does not make every operation cost its length. It may be early, never late.
        self._due: float | None = None
        self._entities: dict[str, _Entity] = {}
        for config in queues:
            if config.name.lower() in self._entities:
                raise ValueError(f"queue {config.name!r} is configured twice")
            dead_letter_config = QueueConfig(
                name=config.name + DEAD_LETTER_SUFFIX,
                lock_duration=config.lock_duration,
                max_delivery_count=config.max_delivery_count,
            )
            entity = _Entity(config, dead_letter=_Entity(dead_letter_config, is_dead_letter=True))
            self._entities[config.name.lower()] = entity

    # -- lookup and notification ---------------------------------------------------------------

    def _entity(self, name: str) -> _Entity:
        key = name.lower()
        if key.endswith(DEAD_LETTER_SUFFIX.lower()):
            parent = self._entities.get(key[: -len(DEAD_LETTER_SUFFIX)])
            if parent is not None and parent.dead_letter is not None:
                return parent.dead_letter
        elif key in self._entities:
            return self._entities[key]
        raise UnknownQueue(name)

    def queue(self, name: str) -> QueueConfig:
        """The configuration of a queue, or of `<queue>/$DeadLetterQueue` (any case).

        The dead-letter sub-queue has no time-to-live and no sessions. Raises UnknownQueue.
        """
        with self._lock:
            return self._entity(name).config

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call `callback()` (outside the lock, on the caller's thread) after every change."""
        with self._lock:
            self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        """Stop calling a callback registered with `add_listener`."""
        with self._lock:
            self._listeners.remove(callback)

    @contextmanager
    def _operation(self) -> Iterator[float]:
        """Hold the lock, apply time, yield now; afterwards wake waiters and listeners if
        anything changed (listeners are called after the lock is released)."""
        with self._lock:
            try:
                now = self._clock()
                if self._due is not None and self._due <= now:
                    self._dirty = self._apply_time(now) or self._dirty
                    self._due = self._next_deadline()
                yield now
            finally:
                dirty, self._dirty = self._dirty, False
                if dirty:
                    self.changed.notify_all()
                listeners = list(self._listeners) if dirty else []
        for callback in listeners:
            callback()

    def wait(self, timeout: float) -> None:
        """Block until something changes or `timeout` seconds pass (real seconds)."""
        with self._lock:
            self.changed.wait(timeout)

    # -- time ----------------------------------------------------------------------------------

    def tick(self) -> float | None:
        """Apply the passing of time: expired locks make their messages deliverable again with
        delivery_count + 1 (dead-lettered at the maximum), expired session locks are released,
        expired messages are dead-lettered ("TTLExpiredException") or dropped, and old duplicate
        detection history is forgotten. Returns when the next of these is due, or None.
        """
        with self._operation():
            return self._due

    def _note(self, due: float | None) -> None:
        """Something becomes due at `due` (under the lock)."""
        if due is not None and (self._due is None or due < self._due):
            self._due = due

    def _apply_time(self, now: float) -> bool:
        changed = False
        for parent in self._entities.values():
            for entity in (parent, parent.dead_letter):
                if entity is not None and self._expire(entity, now):
                    changed = True
        return changed

    def _expire(self, entity: _Entity, now: float) -> bool:
        changed = False
        for session_id, session in list(entity.sessions.items()):
            if session.locked_until <= now:
                self._unlock_session(entity, session_id)
                changed = True
        if not entity.config.requires_session:
            for token, sequence in list(entity.locks.items()):
                locked_until = entity.messages[sequence].locked_until
                if locked_until is not None and locked_until <= now:
                    self._fail_delivery(entity, token)
                    changed = True
        # A locked message does not expire until its lock is gone, as in Service Bus.
        for sequence, message in list(entity.messages.items()):
            if message.lock_token is None and _expired(message, now):
                del entity.messages[sequence]
                if entity.config.dead_letter_on_expiration:
                    self._move_to_dead_letter(entity, message, TTL_EXPIRED, "The message expired.")
                changed = True
        for message_id, forget_at in list(entity.seen_ids.items()):
            if forget_at <= now:
                del entity.seen_ids[message_id]
        return changed

    def _next_deadline(self) -> float | None:
        times: list[float] = []
        for parent in self._entities.values():
            for entity in (parent, parent.dead_letter):
                if entity is None:
                    continue
                times.extend(session.locked_until for session in entity.sessions.values())
                times.extend(entity.seen_ids.values())
                for message in entity.messages.values():
                    if message.locked_until is not None:
                        times.append(message.locked_until)
                    elif message.expires_at is not None:
                        times.append(message.expires_at)
        return min(times, default=None)

    # -- sending and receiving -----------------------------------------------------------------

    def send(self, queue: str, message: StoredMessage) -> bool:
        """Enqueue a copy of `message`; False when it was dropped as a duplicate MessageId seen
        within the queue's duplicate detection window (the send still succeeds, as in Service
        Bus). A session queue requires `session_id` (ValueError); so does nothing else. The
        dead-letter sub-queue takes no sends (ValueError).
        """
        with self._operation() as now:
            entity = self._entity(queue)
            config = entity.config
            if entity.is_dead_letter:
                raise ValueError("messages cannot be sent to a dead-letter sub-queue")
            if config.requires_session and not message.session_id:
                raise ValueError(f"queue {config.name!r} requires a session id on every message")
            window = config.duplicate_detection_window
            if window is not None and message.message_id is not None:
                if message.message_id in entity.seen_ids:
                    return False
                entity.seen_ids[message.message_id] = now + window
                self._note(now + window)
            stored = _copy(message)
            stored.sequence_number = entity.next_sequence
            entity.next_sequence += 1
            stored.enqueued_at = now
            ttls = [t for t in (message.ttl, config.default_ttl) if t is not None]
            stored.expires_at = now + min(ttls) if ttls else None
            self._note(stored.expires_at)
            stored.delivery_count = 0
            stored.lock_token = stored.locked_until = None
            stored.dead_letter_reason = stored.dead_letter_description = None
            entity.insert(stored)
            self._dirty = True
            return True

    def receive(
        self,
        queue: str,
        max_messages: int = 1,
        *,
        session_id: str | None = None,
        owner: object = None,
    ) -> list[StoredMessage]:
        """Peek-lock up to `max_messages` available messages, in sequence order; returns
        copies with `lock_token` and `locked_until` set. Expired messages are never returned.
        On a session queue only messages of `session_id` are returned, `owner` must hold that
        session (`lock_session`, else SessionLockLost), and the messages stay locked as long as
        the session does.
        """
        with self._operation() as now:
            entity = self._entity(queue)
            locked_until = now + entity.config.lock_duration
            if entity.config.requires_session:
                session = entity.sessions.get(session_id or "")
                if session is None or session.owner is not owner:
                    raise SessionLockLost(f"session {session_id!r} is not locked by this receiver")
                locked_until = session.locked_until
            taken: list[StoredMessage] = []
            for message in entity.messages.values():
                if len(taken) >= max_messages:
                    break
                if message.lock_token is not None or _expired(message, now):
                    continue
                if entity.config.requires_session and message.session_id != session_id:
                    continue
                message.lock_token = str(uuid.uuid4())
                message.locked_until = locked_until
                entity.locks[message.lock_token] = message.sequence_number
                self._note(locked_until)
                taken.append(_copy(message))
            return taken

    def peek(
        self,
        queue: str,
        max_messages: int = 1,
        from_sequence: int = 0,
        *,
        session_id: str | None = None,
    ) -> list[StoredMessage]:
        """Copies of up to `max_messages` messages from sequence number `from_sequence` on
        (only those of `session_id` when given), locked or not, without locking them."""
        with self._operation():
            found = [
                message
                for sequence, message in self._entity(queue).messages.items()
                if sequence >= from_sequence
                and (session_id is None or message.session_id == session_id)
            ]
            return [_copy(m) for m in found[:max_messages]]

    # -- settlement ----------------------------------------------------------------------------

    def _locked(self, queue: str, lock_token: str) -> tuple[_Entity, StoredMessage]:
        entity = self._entity(queue)
        sequence = entity.locks.get(str(lock_token))
        if sequence is None:
            raise MessageLockLost(f"lock {lock_token} is unknown or has expired")
        return entity, entity.messages[sequence]

    def complete(self, queue: str, lock_token: str) -> None:
        """Remove a locked message: it was processed. MessageLockLost if the lock is gone."""
        with self._operation():
            entity, message = self._locked(queue, lock_token)
            del entity.locks[str(lock_token)]
            del entity.messages[message.sequence_number]
            self._dirty = True

    def abandon(self, queue: str, lock_token: str) -> None:
        """Unlock a message after a failed delivery: delivery_count + 1; at the queue's
        max_delivery_count it moves to the dead-letter sub-queue ("MaxDeliveryCountExceeded"),
        otherwise it is available again at its original position."""
        with self._operation():
            entity, _ = self._locked(queue, lock_token)
            self._fail_delivery(entity, str(lock_token))
            self._dirty = True

    def release(self, queue: str, lock_token: str) -> None:
        """Unlock a message that was never handed to the application (AMQP `released`):
        available again at its position, delivery_count unchanged."""
        with self._operation():
            entity, message = self._locked(queue, lock_token)
            del entity.locks[str(lock_token)]
            message.lock_token = message.locked_until = None
            self._note(message.expires_at)  # an unlocked message can expire again
            self._dirty = True

    def dead_letter(
        self, queue: str, lock_token: str, reason: str | None, description: str | None
    ) -> None:
        """Move a locked message to `<queue>/$DeadLetterQueue`, keeping reason and description
        (a message already in the sub-queue stays there, unlocked, with the new ones).
        ValueError when either is longer than Service Bus accepts (MAX_DEAD_LETTER_TEXT)."""
        for text in (reason, description):
            if text is not None and len(text) > MAX_DEAD_LETTER_TEXT:
                raise ValueError(
                    f"a dead-letter reason or description is limited to {MAX_DEAD_LETTER_TEXT}"
                    " characters"
                )
        with self._operation():
            entity, message = self._locked(queue, lock_token)
            del entity.locks[str(lock_token)]
            message.lock_token = message.locked_until = None
            if entity.is_dead_letter:
                message.dead_letter_reason = reason
                message.dead_letter_description = description
            else:
                del entity.messages[message.sequence_number]
                self._move_to_dead_letter(entity, message, reason, description)
            self._dirty = True

    def renew_lock(self, queue: str, lock_token: str) -> float:
        """Extend a message lock by the queue's lock duration; the new locked-until time.
        MessageLockLost if it expired or is unknown. Messages of a session queue are locked by
        their session: renew the session instead (ValueError)."""
        with self._operation() as now:
            entity, message = self._locked(queue, lock_token)
            if entity.config.requires_session:
                raise ValueError("messages of a session queue are locked by their session")
            message.locked_until = now + entity.config.lock_duration
            self._note(message.locked_until)
            return message.locked_until

    def _fail_delivery(self, entity: _Entity, lock_token: str) -> None:
        sequence = entity.locks.pop(lock_token)
        message = entity.messages[sequence]
        message.lock_token = message.locked_until = None
        self._note(message.expires_at)  # an unlocked message can expire again
        message.delivery_count += 1
        limit = entity.config.max_delivery_count
        if not entity.is_dead_letter and message.delivery_count >= limit:
            del entity.messages[sequence]
            description = f"Message could not be consumed after {limit} delivery attempts."
            self._move_to_dead_letter(entity, message, MAX_DELIVERY_COUNT_EXCEEDED, description)

    @staticmethod
    def _move_to_dead_letter(
        entity: _Entity, message: StoredMessage, reason: str | None, description: str | None
    ) -> None:
        if entity.dead_letter is None:  # a sub-queue has no sub-queue of its own
            raise ValueError(f"{entity.config.name!r} has no dead-letter sub-queue")
        message.lock_token = message.locked_until = None
        message.expires_at = None
        message.dead_letter_reason = reason
        message.dead_letter_description = description
        entity.dead_letter.insert(message)

    # -- sessions ------------------------------------------------------------------------------

    def lock_session(
        self, queue: str, session_id: str | None, owner: object
    ) -> tuple[str, float] | None:
        """Lock a session for `owner`; returns (session id, locked-until).

        A named session is locked even if it has no messages yet (a receiver may wait for
        them); SessionCannotBeLocked if another owner holds it (the same owner renews it).
        With `session_id` None, the first unlocked session (in sequence order) that has an
        available message is locked, or None is returned when there is none.
        """
        with self._operation() as now:
            entity = self._entity(queue)
            if not entity.config.requires_session:
                raise ValueError(f"queue {entity.config.name!r} does not use sessions")
            if session_id is None:
                session_id = self._next_available_session(entity, now)
                if session_id is None:
                    return None
            held = entity.sessions.get(session_id)
            if held is not None and held.owner is not owner:
                raise SessionCannotBeLocked(f"session {session_id!r} is locked by another receiver")
            held = _SessionLock(owner, now + entity.config.lock_duration)
            entity.sessions[session_id] = held
            self._follow_session(entity, session_id, held.locked_until)
            self._note(held.locked_until)
            return session_id, held.locked_until

    def renew_session(self, queue: str, session_id: str, owner: object) -> float:
        """Extend the session lock held by `owner`; the new locked-until time.
        SessionLockLost if `owner` does not hold it (any more)."""
        with self._operation() as now:
            entity = self._entity(queue)
            held = entity.sessions.get(session_id)
            if held is None or held.owner is not owner:
                raise SessionLockLost(f"session {session_id!r} is not locked by this receiver")
            held.locked_until = now + entity.config.lock_duration
            self._follow_session(entity, session_id, held.locked_until)
            self._note(held.locked_until)
            return held.locked_until

    def release_session(self, queue: str, session_id: str, owner: object) -> None:
        """Give up a session lock held by `owner` (no-op otherwise): the receiver closed. Its
        still-locked messages become available again with their delivery count unchanged, as
        in Service Bus, where only a lock expiry or an abandon raises the count (see
        docs/local-servicebus.md); so a receiver that keeps reopening never dead-letters."""
        with self._operation():
            entity = self._entity(queue)
            held = entity.sessions.get(session_id)
            if held is not None and held.owner is owner:
                self._unlock_session(entity, session_id, failed=False)
                self._dirty = True

    def session_locked_until(self, queue: str, session_id: str, owner: object) -> float | None:
        """When `owner`'s lock on a session expires, or None if `owner` does not hold it."""
        with self._operation():
            held = self._entity(queue).sessions.get(session_id)
            return held.locked_until if held is not None and held.owner is owner else None

    def get_session_state(self, queue: str, session_id: str) -> bytes | None:
        """The state stored for a session (None if never set, or cleared)."""
        with self._operation():
            return self._entity(queue).session_states.get(session_id)

    def set_session_state(self, queue: str, session_id: str, state: bytes | None) -> None:
        """Store (or with None, clear) a session's state."""
        with self._operation():
            states = self._entity(queue).session_states
            if state is None:
                states.pop(session_id, None)
            else:
                states[session_id] = bytes(state)

    @staticmethod
    def _next_available_session(entity: _Entity, now: float) -> str | None:
        for message in entity.messages.values():
            if (
                message.lock_token is None
                and message.session_id is not None
                and message.session_id not in entity.sessions
                and not _expired(message, now)
            ):
                return message.session_id
        return None

    def _unlock_session(self, entity: _Entity, session_id: str, *, failed: bool = True) -> None:
        """Drop a session lock; its locked messages come back, counted as failed deliveries
        when the lock expired (`failed`), unchanged when the receiver let it go."""
        del entity.sessions[session_id]
        for token, sequence in list(entity.locks.items()):
            message = entity.messages[sequence]
            if message.session_id != session_id:
                continue
            if failed:
                self._fail_delivery(entity, token)
            else:
                del entity.locks[token]
                message.lock_token = message.locked_until = None
                self._note(message.expires_at)

    @staticmethod
    def _follow_session(entity: _Entity, session_id: str, locked_until: float) -> None:
        for sequence in entity.locks.values():
            message = entity.messages[sequence]
            if message.session_id == session_id:
                message.locked_until = locked_until

    # -- inspection ----------------------------------------------------------------------------

    def stats(self, queue: str) -> dict[str, int]:
        """Counts for a queue (or sub-queue): `active` (available), `locked`, `dead_lettered`
        (messages in its dead-letter sub-queue) and `scheduled` (always 0: not emulated)."""
        with self._operation():
            entity = self._entity(queue)
            locked = len(entity.locks)
            dead = entity.dead_letter
            return {
                "active": len(entity.messages) - locked,
                "locked": locked,
                "dead_lettered": 0 if dead is None else len(dead.messages),
                "scheduled": 0,
            }

    def queues(self) -> list[str]:
        """The names of the configured queues (without their sub-queues)."""
        with self._lock:
            return [entity.config.name for entity in self._entities.values()]


def _expired(message: StoredMessage, now: float) -> bool:
    return message.expires_at is not None and message.expires_at <= now
