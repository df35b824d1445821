"""Settling a peek-locked message by its lock token, through the queue's management link.

A message's lock lives in Service Bus, not in the link that delivered it: when that link is
detached (idle, an entity update, a dropped connection) the lock stays valid until it expires,
and the AMQP management operation `com.microsoft:update-disposition` settles it by lock token
from any link on the queue
(https://learn.microsoft.com/azure/service-bus-messaging/service-bus-amqp-request-response;
the Go SDK settles by lock token alone since azservicebus 1.10.0). azure-servicebus 7.15 uses
that operation only for deferred messages or when its receive link is missing; a message
delivered on an earlier link of a reconnected receiver fails there ("delivery tag not found").
It also refuses, before asking the service, to settle a message whose `locked_until_utc` is past
on the local clock: with a clock running ahead by more than a lock's duration, every message
(https://github.com/Azure/azure-sdk-for-python/issues/25996).
So the relay settles through the management link whenever its receive link is not the one the
message came on, or the local clock disagrees with the service's. This module is the one place
that calls the SDK's private settlement method; the contract tests run it against the broker.
"""

from __future__ import annotations

from dataclasses import dataclass

from azure.servicebus import ServiceBusReceivedMessage
from azure.servicebus.aio import ServiceBusReceiver

COMPLETE = "completed"
ABANDON = "abandoned"
DEAD_LETTER = "suspended"


@dataclass(frozen=True)
class Received:
    """A delivered message and the SDK link (its receive handler) it arrived on."""

    message: ServiceBusReceivedMessage
    link: object


def link_of(receiver: ServiceBusReceiver) -> object:
    """The receiver's current AMQP link: the SDK replaces it whenever it reconnects."""
    return getattr(receiver, "_handler", None)


def on_its_link(receiver: ServiceBusReceiver, received: Received) -> bool:
    """Whether the receiver can settle the message on its receive link: the link it came on is
    still the receiver's, and the SDK's own check of the lock on the local clock will pass."""
    message = received.message
    return (
        link_of(receiver) is received.link
        and received.link is not None
        and not message._lock_expired  # the SDK's client-side check, see above
    )


async def settle_by_lock_token(
    receiver: ServiceBusReceiver,
    message: ServiceBusReceivedMessage,
    disposition: str,
    reason: str | None = None,
    description: str | None = None,
) -> None:
    """Settle `message` (COMPLETE, ABANDON or DEAD_LETTER) by its lock token on `receiver`'s
    management link, with the receiver's retry policy; the service judges the lock."""
    details = (
        {"deadletter-reason": reason or "", "deadletter-description": description or ""}
        if disposition == DEAD_LETTER
        else None
    )
    await receiver._do_retryable_operation(  # private: see the module docstring
        receiver._settle_message_via_mgmt_link,
        settlement=disposition,
        lock_tokens=[message.lock_token],
        dead_letter_details=details,
    )
    message._settled = True  # as the SDK marks a message it settled itself
