"""Sessions of the in-memory Service Bus model, and `MemoryBroker`, the model's public class.

`MemoryBroker` adds to `Queues` the session operations: lock a named session or the next one
with an available message (exclusive per owner), renew and release that lock, ask until when an
owner holds it, and keep per-session state. While a session is locked its owner's messages stay
locked with it. It is the top layer of the model (`store.py` below `queues.py` below this); it
enforces no authorisation and never looks inside message bodies or session state.
"""

from __future__ import annotations

from writeback.transport.memory.entity import (
    Entity,
    SessionCannotBeLocked,
    SessionLock,
    SessionLockLost,
    expired,
)
from writeback.transport.memory.queues import Queues


class MemoryBroker(Queues):
    """Queues with Service Bus semantics, in memory; see `writeback.transport.memory`."""

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
            held = SessionLock(owner, now + entity.config.lock_duration)
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
    def _next_available_session(entity: Entity, now: float) -> str | None:
        for message in entity.messages.values():
            if (
                message.lock_token is None
                and message.session_id is not None
                and message.session_id not in entity.sessions
                and not expired(message, now)
            ):
                return message.session_id
        return None

    @staticmethod
    def _follow_session(entity: Entity, session_id: str, locked_until: float) -> None:
        for sequence in entity.locks.values():
            message = entity.messages[sequence]
            if message.session_id == session_id:
                message.locked_until = locked_until
