"""Sending, receiving and settling messages in the in-memory Service Bus model.

`Queues` adds to `Store` what a client does with messages: send (with time-to-live and
duplicate detection), peek-lock receive (by session on a session queue, for the receiver that
holds it), peek, and the settlements: complete, abandon, release, dead-letter, renew a lock.
A lock token that is unknown or expired raises MessageLockLost. It is the middle layer of
`MemoryBroker` (sessions are `broker.py`'s); it never looks inside message bodies.
"""

from __future__ import annotations

import uuid

from writeback.transport import MAX_DEAD_LETTER_TEXT
from writeback.transport.memory.entity import (
    Entity,
    MessageLockLost,
    SessionLockLost,
    StoredMessage,
    copy_message,
    expired,
)
from writeback.transport.memory.store import Store


class Queues(Store):
    """A `Store` that messages can be sent to, received from and settled in."""

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
            stored = copy_message(message)
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
                if message.lock_token is not None or expired(message, now):
                    continue
                if entity.config.requires_session and message.session_id != session_id:
                    continue
                message.lock_token = str(uuid.uuid4())
                message.locked_until = locked_until
                entity.locks[message.lock_token] = message.sequence_number
                self._note(locked_until)
                taken.append(copy_message(message))
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
            return [copy_message(m) for m in found[:max_messages]]

    # -- settlement ----------------------------------------------------------------------------

    def _locked(self, queue: str, lock_token: str) -> tuple[Entity, StoredMessage]:
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
