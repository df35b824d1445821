"""Links of the local Service Bus broker: the bookkeeping kept per link, and what is done to one.

`LinkState` is the broker's record of an attached link (its node, the session it holds, when it
was last used); it is also the owner of a session lock in the queue model. The functions here
act on proton links only: refuse an attach as Service Bus does, write a locked session into a
receiver's source, find the receiver holding a session, and send a `$cbs`/`$management` reply.
They never touch the queue model and never log message bodies or tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from proton import Link, Message, Terminus

from devstack.servicebus import amqp

log = logging.getLogger(__name__)


@dataclass(eq=False)
class LinkState:
    """Our bookkeeping for one attached link; it is also the owner of a session lock."""

    link: Link
    node: amqp.Node
    session_id: str | None = None
    waiting_until: float | None = None  # a next-available receiver not yet given a session
    settle_on_send: bool = False  # receive-and-delete
    last_used: float = 0.0  # monotonic: the last send, receive or settlement on it


def refuse(link: Link, condition: str, description: str) -> None:
    """Refuse an attach with an AMQP error condition."""
    # As Service Bus does: attach with a null terminus, then detach with the error. pyamqp
    # then fails the link with that condition, and the SDK maps it to its exception (an
    # echoed terminus would let a sender count as attached and lose the condition).
    link.source.type = Terminus.UNSPECIFIED
    link.target.type = Terminus.UNSPECIFIED
    link.open()
    link.condition = amqp.error(condition, description)
    link.close()


def set_session_terminus(state: LinkState, locked_until: float) -> None:
    """Tell a session receiver which session it locked, and until when."""
    link = state.link
    filters = terminus_filters(link.remote_source) or {}
    filters[amqp.SESSION_FILTER] = state.session_id
    link.source.filter.clear()
    link.source.filter.put_object(filters)
    link.properties = {amqp.LOCKED_UNTIL_UTC: amqp.to_ticks(locked_until)}


def session_holder(
    states: Iterable[LinkState], entity: str, session_id: str, link_name: str | None
) -> LinkState | None:
    """The receiver link state holding a session (for session management operations)."""
    holders = [
        s for s in states if s.session_id == session_id and s.node.entity.lower() == entity.lower()
    ]
    named = [s for s in holders if link_name is not None and s.link.name == link_name]
    return (named or holders or [None])[0]


def respond(
    states: Iterable[LinkState], state: LinkState, request: Message, response: Message
) -> None:
    """Send a reply on the same connection: the link whose target is the request's
    reply-to, else any link reading from the same node."""
    candidates = [
        s
        for s in states
        if s.link.connection == state.link.connection and s.link.is_sender and s.node == state.node
    ]
    preferred = [s for s in candidates if s.link.remote_target.address == request.reply_to]
    for candidate in preferred + candidates:
        candidate.link.send(response)
        return
    log.warning("local Service Bus: no reply link for a %s request", state.node.kind)


def terminus_filters(terminus: Any) -> dict[Any, Any] | None:
    """The filter set of a link's source, as a dict (None when it has none)."""
    data = terminus.filter
    data.rewind()
    if not data.next():
        return None
    value = data.get_object()
    return dict(value) if isinstance(value, dict) else None
