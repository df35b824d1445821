"""The core of the in-memory Service Bus model: its queues, its lock, and the passing of time.

`Store` keeps the queues (`entity.Entity`, each with its dead-letter sub-queue), finds them by
name in any case, and runs every operation under one re-entrant lock (`_operation`), applying
time first: expired message locks fail their delivery (dead-lettered at the maximum delivery
count), expired session locks are released, expired messages are dead-lettered or dropped, old
duplicate-detection history is forgotten. Time is applied by a scan of every message only once
the earliest deadline noted has passed. After a change it notifies `changed` and calls the
listeners (outside the lock). It is the bottom layer of `MemoryBroker`: sending, receiving and
settlement (`queues.py`) and sessions (`broker.py`) build on it; it never imports them and
never looks inside message bodies.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from writeback.transport.memory.entity import (
    DEAD_LETTER_SUFFIX,
    MAX_DELIVERY_COUNT_EXCEEDED,
    TTL_EXPIRED,
    Entity,
    QueueConfig,
    StoredMessage,
    UnknownQueue,
    expired,
)


class Store:
    """Queues with their lock and clock; see the module docstring."""

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
        self._entities: dict[str, Entity] = {}
        for config in queues:
            if config.name.lower() in self._entities:
                raise ValueError(f"queue {config.name!r} is configured twice")
            dead_letter_config = QueueConfig(
                name=config.name + DEAD_LETTER_SUFFIX,
                lock_duration=config.lock_duration,
                max_delivery_count=config.max_delivery_count,
            )
            entity = Entity(config, dead_letter=Entity(dead_letter_config, is_dead_letter=True))
            self._entities[config.name.lower()] = entity

    # -- lookup and notification ---------------------------------------------------------------

    def _entity(self, name: str) -> Entity:
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

    def _expire(self, entity: Entity, now: float) -> bool:
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
            if message.lock_token is None and expired(message, now):
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

    def _fail_delivery(self, entity: Entity, lock_token: str) -> None:
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
        entity: Entity, message: StoredMessage, reason: str | None, description: str | None
    ) -> None:
        if entity.dead_letter is None:  # a sub-queue has no sub-queue of its own
            raise ValueError(f"{entity.config.name!r} has no dead-letter sub-queue")
        message.lock_token = message.locked_until = None
        message.expires_at = None
        message.dead_letter_reason = reason
        message.dead_letter_description = description
        entity.dead_letter.insert(message)

    def _unlock_session(self, entity: Entity, session_id: str, *, failed: bool = True) -> None:
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
