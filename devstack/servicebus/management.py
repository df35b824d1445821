"""`$management` operations of the local Service Bus broker, as azure-servicebus 7.15 calls them.

A request is a message whose application property `operation` names the operation and whose
body (an AMQP map) holds its arguments; the answer carries `statusCode`/`statusDescription`
(and `errorCondition` on failure), correlated by the request's message id. The SDK maps the
condition to its exception: `com.microsoft:message-lock-lost` -> MessageLockLostError,
`com.microsoft:session-lock-lost` -> SessionLockLostError, `amqp:not-found` ->
MessagingEntityNotFoundError. Operations the broker does not emulate answer 501.
Bodies hold lock tokens and session state: never log them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from proton import Message

from devstack.servicebus import amqp
from writeback.transport.memory import (
    MemoryBroker,
    MessageLockLost,
    SessionLockLost,
    UnknownQueue,
)

log = logging.getLogger(__name__)

VENDOR = "com.microsoft:"
LOCK_LOST = "com.microsoft:message-lock-lost"
SESSION_LOCK_LOST = "com.microsoft:session-lock-lost"

SessionOwner = Callable[[str, str, str | None], object]


class Management:
    """Answer management requests for one broker. `session_owner(entity, session_id,
    link_name)` finds the receiver that holds a session (None if nobody does)."""

    def __init__(self, broker: MemoryBroker, session_owner: SessionOwner) -> None:
        self.broker = broker
        self.session_owner = session_owner
        self.operations: dict[str, Callable[[str, Mapping[str, Any], Message], Message]] = {
            VENDOR + "renew-lock": self.renew_lock,
            VENDOR + "renew-session-lock": self.renew_session_lock,
            VENDOR + "peek-message": self.peek,
            VENDOR + "get-session-state": self.get_session_state,
            VENDOR + "set-session-state": self.set_session_state,
            VENDOR + "update-disposition": self.update_disposition,
        }

    def answer(self, entity: str, request: Message) -> Message:
        """The response to one request on `<entity>/$management`."""
        properties = request.properties or {}
        operation = str(properties.get("operation") or "")
        handler = self.operations.get(operation)
        if handler is None:
            return amqp.reply(
                request,
                501,
                f"The operation '{operation}' is not emulated by the local Service Bus broker.",
                condition="amqp:not-implemented",
            )
        body = request.body if isinstance(request.body, dict) else {}
        arguments = {str(k): v for k, v in body.items()}
        try:
            return handler(entity, arguments, request)
        except MessageLockLost as exc:
            return amqp.reply(request, 410, str(exc), condition=LOCK_LOST)
        except SessionLockLost as exc:
            return amqp.reply(request, 410, str(exc), condition=SESSION_LOCK_LOST)
        except UnknownQueue:
            return amqp.reply(
                request, 404, f"The entity '{entity}' was not found.", condition="amqp:not-found"
            )
        except NotImplementedError as exc:
            return amqp.reply(request, 501, str(exc), condition="amqp:not-implemented")
        except (ValueError, KeyError, TypeError) as exc:
            log.info("local Service Bus: bad %s request: %s", operation, type(exc).__name__)
            return amqp.reply(
                request, 400, f"Bad request: {exc}", condition="com.microsoft:argument-error"
            )

    def renew_lock(self, entity: str, arguments: Mapping[str, Any], request: Message) -> Message:
        """`lock-tokens` (UUID array) -> `expirations` (timestamp array)."""
        tokens = amqp.lock_tokens(arguments["lock-tokens"])
        expirations = [self.broker.renew_lock(entity, token) for token in tokens]
        return amqp.reply(request, 200, "OK", {"expirations": amqp.timestamps(expirations)})

    def _owner(self, entity: str, arguments: Mapping[str, Any], request: Message) -> object:
        link_name = (request.properties or {}).get("associated-link-name")
        session_id = str(amqp.plain(arguments["session-id"]))
        owner = self.session_owner(
            entity, session_id, None if link_name is None else str(link_name)
        )
        if owner is None:
            raise SessionLockLost(f"session {session_id!r} is not locked by a receiver")
        return owner

    def renew_session_lock(
        self, entity: str, arguments: Mapping[str, Any], request: Message
    ) -> Message:
        """`session-id` -> `expiration` (timestamp)."""
        owner = self._owner(entity, arguments, request)
        session_id = str(amqp.plain(arguments["session-id"]))
        locked_until = self.broker.renew_session(entity, session_id, owner)
        return amqp.reply(request, 200, "OK", {"expiration": amqp.to_timestamp(locked_until)})

    def get_session_state(
        self, entity: str, arguments: Mapping[str, Any], request: Message
    ) -> Message:
        """`session-id` -> `session-state` (binary, or null when none was set)."""
        self._owner(entity, arguments, request)
        state = self.broker.get_session_state(entity, str(amqp.plain(arguments["session-id"])))
        return amqp.reply(request, 200, "OK", {"session-state": state})

    def set_session_state(
        self, entity: str, arguments: Mapping[str, Any], request: Message
    ) -> Message:
        """`session-id`, `session-state` (binary or null) -> nothing."""
        self._owner(entity, arguments, request)
        state = arguments.get("session-state")
        self.broker.set_session_state(
            entity,
            str(amqp.plain(arguments["session-id"])),
            None if state is None else bytes(state),
        )
        return amqp.reply(request, 200, "OK", {})

    def peek(self, entity: str, arguments: Mapping[str, Any], request: Message) -> Message:
        """`from-sequence-number`, `message-count` (and `session-id` for a session receiver)
        -> `messages`: a list of maps {`message`: the encoded message}; 204 when none."""
        start = int(amqp.plain(arguments.get("from-sequence-number")) or 0)  # type: ignore[call-overload]
        count = int(amqp.plain(arguments.get("message-count")) or 1)  # type: ignore[call-overload]
        session = amqp.plain(arguments.get("session-id"))
        found = self.broker.peek(
            entity, count, start, session_id=None if session is None else str(session)
        )
        if not found:
            return amqp.reply(request, 204, "No Content", {})
        source = entity.rsplit("/", 1)[0] if "/" in entity else None
        messages = []
        for stored in found:
            stored.locked_until = None  # a peeked message carries no lock
            encoded = amqp.encode(amqp.delivered_message(stored, source))
            messages.append({"message": encoded})
        return amqp.reply(request, 200, "OK", {"messages": messages})

    def update_disposition(
        self, entity: str, arguments: Mapping[str, Any], request: Message
    ) -> Message:
        """Settle by lock token (the SDK's fallback when the receive link is gone):
        `disposition-status` completed / abandoned / suspended (dead-letter) / defered."""
        status = str(amqp.plain(arguments["disposition-status"]))
        for token in amqp.lock_tokens(arguments["lock-tokens"]):
            if status == "completed":
                self.broker.complete(entity, token)
            elif status == "abandoned":
                self.broker.abandon(entity, token)
            elif status == "suspended":
                reason = amqp.plain(arguments.get("deadletter-reason"))
                description = amqp.plain(arguments.get("deadletter-description"))
                self.broker.dead_letter(
                    entity,
                    token,
                    None if reason is None else str(reason),
                    None if description is None else str(description),
                )
            else:
                raise NotImplementedError(f"disposition '{status}' is not emulated")
        return amqp.reply(request, 200, "OK", {})
