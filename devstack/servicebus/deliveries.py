"""Deliveries of the local Service Bus broker: messages in from senders, out to receivers, and
the settlement of peek-locked deliveries.

Settlement follows Service Bus as azure-servicebus 7.15 expects it: the SDK sends its
disposition unsettled (receiver-settle-mode second) and waits until the broker settles with the
outcome it applied. Accepted completes, rejected dead-letters (reason and description from the
`com.microsoft:dead-letter` error's info), modified with delivery-failed abandons (the delivery
count goes up), released or modified without delivery-failed releases (it does not), and a lock
that is gone is answered `rejected` with `com.microsoft:message-lock-lost` (session queues:
`com.microsoft:session-lock-lost`), which the SDK raises as MessageLockLostError. Bodies are
never logged.
"""

from __future__ import annotations

import uuid
from typing import Any

from proton import Condition, Delivery, Receiver, Sender

from devstack.servicebus import amqp
from writeback.transport.memory import (
    MemoryBroker,
    MessageLockLost,
    SessionLockLost,
    StoredMessage,
)

LOCK_LOST = "The lock supplied is invalid: it expired or was already released."


def send_locked(link: Sender, entity: str, stored: StoredMessage, settle_on_send: bool) -> None:
    """Transfer a peek-locked message; the delivery tag is the lock token (the SDK reads
    `UUID(bytes_le=tag)`). Receive-and-delete links get it pre-settled (the caller completes)."""
    if stored.lock_token is None:  # receive() always locks; never deliver without a lock
        raise ValueError("a delivered message must be locked")
    source = entity.rsplit("/", 1)[0] if "/" in entity else None
    delivery = link.delivery(uuid.UUID(stored.lock_token).bytes_le)
    # Never read `delivery.tag` back: proton decodes it as UTF-8, and these bytes are not.
    link.stream(amqp.encode(amqp.delivered_message(stored, source)))
    link.advance()
    if settle_on_send:
        delivery.settle()
    else:
        delivery.sb_lock = (entity, stored.lock_token)


def read(link: Receiver, delivery: Delivery) -> bytes:
    """The complete transfer of an incoming delivery; keeps the sender's credit topped up."""
    raw = bytes(link.recv(delivery.pending) or b"")
    link.advance()
    if link.credit < INCOMING_CREDIT // 2:
        link.flow(INCOMING_CREDIT - link.credit)
    return raw


INCOMING_CREDIT = 100


def enqueue(broker: MemoryBroker, entity: str, delivery: Delivery, raw: bytes) -> None:
    """Store the message (or every message of a batch) and settle the transfer: accepted, or
    rejected with the reason (all or nothing for a batch)."""
    try:
        encoded_messages = amqp.split_batch(raw)
        messages = [amqp.stored_message(encoded) for encoded in encoded_messages]
        too_big = [e for e in map(amqp.size_error, [raw, *encoded_messages]) if e]
    except Exception:  # proton raises its own DataException on bytes that are not AMQP
        reject(delivery, "amqp:decode-error", "The message could not be decoded.")
        return
    if too_big:
        reject(delivery, amqp.MESSAGE_SIZE_EXCEEDED, too_big[0])
        return
    config = broker.queue(entity)
    if config.requires_session and any(not m.session_id for m in messages):
        reject(
            delivery,
            "amqp:not-allowed",
            f"The queue '{config.name}' requires a SessionId on every message.",
        )
        return
    try:
        for message in messages:
            broker.send(entity, message)
    except ValueError as exc:
        reject(delivery, "amqp:not-allowed", str(exc))
        return
    delivery.update(Delivery.ACCEPTED)
    delivery.settle()


def reject(delivery: Delivery, condition: str, description: str) -> None:
    delivery.local.condition = amqp.error(condition, description)
    delivery.update(Delivery.REJECTED)
    delivery.settle()


def settle(broker: MemoryBroker, delivery: Delivery) -> None:
    """Apply the receiver's disposition to the lock, then settle with the outcome applied."""
    lock = getattr(delivery, "sb_lock", None)
    if lock is None:
        delivery.settle()
        return
    entity, token = lock
    outcome = delivery.remote_state
    try:
        if outcome == Delivery.ACCEPTED:
            broker.complete(entity, token)
        elif outcome == Delivery.REJECTED:
            info = _info(delivery.remote.condition)
            reason = _text(info.get(amqp.DEAD_LETTER_REASON))
            broker.dead_letter(entity, token, reason, _text(info.get(amqp.DEAD_LETTER_DESCRIPTION)))
        elif outcome == Delivery.MODIFIED and delivery.remote.undeliverable:
            raise NotImplementedError("deferral is not emulated by the local broker")
        elif outcome == Delivery.MODIFIED and delivery.remote.failed:
            broker.abandon(entity, token)
        elif outcome in (Delivery.MODIFIED, Delivery.RELEASED):
            broker.release(entity, token)
        else:
            return  # not a terminal outcome (yet)
    except (MessageLockLost, SessionLockLost):
        sessions = broker.queue(entity).requires_session
        condition = (
            "com.microsoft:session-lock-lost" if sessions else "com.microsoft:message-lock-lost"
        )
        delivery.local.condition = amqp.error(condition, LOCK_LOST)
        outcome = Delivery.REJECTED
    except NotImplementedError as exc:
        delivery.local.condition = amqp.error("amqp:not-implemented", str(exc))
        outcome = Delivery.REJECTED
    except ValueError as exc:  # a dead-letter reason or description Service Bus would refuse
        delivery.local.condition = amqp.error("com.microsoft:argument-out-of-range", str(exc))
        outcome = Delivery.REJECTED
    delivery.sb_lock = None
    if not delivery.settled:
        # A successful dead-letter is echoed as `rejected` without an error: pyamqp treats a
        # rejected outcome that carries an error as a failed settlement.
        delivery.update(outcome)
    delivery.settle()


def _info(condition: Condition | None) -> dict[str, Any]:
    if condition is None or not isinstance(condition.info, dict):
        return {}
    return {str(k): v for k, v in condition.info.items()}


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)
