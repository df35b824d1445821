"""The `$cbs` node of the local Service Bus broker, and the check of each link against it.

A client puts its tokens on `$cbs` (`put-token`, as azure-servicebus's `_pyamqp/cbs.py` does);
`put_token` has `authz.Policy` judge each one and keeps what it grants on the connection, and
`authorised` lets a link attach only if those grants give its identity the right it needs on the
queue (`Send` to send, `Listen` for the rest), refusing it with Service Bus's condition and
wording otherwise. The judging itself is `authz.py`'s; this module is the AMQP side of it. It
never logs a token, a signature or a key: a refusal is logged by the exception's name only.
"""

from __future__ import annotations

import logging

from proton import Link, Message

from devstack.servicebus import amqp, authz
from devstack.servicebus.links import refuse

log = logging.getLogger(__name__)


def put_token(policy: authz.Policy, link: Link, request: Message, now: float) -> Message:
    """Judge a CBS put-token; remember what it grants on this connection."""
    properties = {str(k): v for k, v in (request.properties or {}).items()}
    try:
        grant = policy.accept(
            str(request.body),
            str(properties.get("type", "")),
            str(properties.get("name", "")),
            now,
        )
    except (authz.TokenRefused, ValueError) as exc:
        log.info("local Service Bus: token refused: %s", type(exc).__name__)
        return amqp.reply(request, 401, str(exc))
    grants = getattr(link.connection, "sb_grants", None)
    if grants is None:
        grants = link.connection.sb_grants = []
    grants.append(grant)
    return amqp.reply(request, 200, "OK")


def authorised(policy: authz.Policy, link: Link, node: amqp.Node, now: float) -> bool:
    """Whether the connection's tokens allow this link (refused with Service Bus's
    condition and wording otherwise): Send to send to a queue, Listen for the rest."""
    right = authz.SEND if node.kind == "queue" and link.is_receiver else authz.LISTEN
    grants = getattr(link.connection, "sb_grants", [])
    if authz.authorised(grants, policy, node.entity, right, now):
        return True
    refuse(
        link,
        "amqp:unauthorized-access",
        f"Unauthorized access. '{right}' claim(s) are required to perform this operation.",
    )
    return False
