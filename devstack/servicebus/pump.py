"""The event loop of the local Service Bus broker: start and stop, timers, delivery, faults.

`BrokerPump` is the proton handler's lower layer (the attach of connections and links is
`broker.py`'s). It keeps the attached links (`links.LinkState`) and connections, and its pump
runs after every event and timer: it grants waiting next-available session receivers a
session (or refuses them at their timeout), detaches receivers whose session lock was lost,
and delivers peek-locked messages within each receiver's credit (`deliveries.py`). Incoming
transfers are enqueued, settled (`deliveries.py`), or answered as `$cbs` (`cbs.py`) and
`$management` (`management.py`) requests. A timer applies lock and TTL expiry, and the fault
switches (`faults.py`) throttle, force-detach links, close idle connections and skew the
clock. It runs on the container's single thread and never logs message bodies or tokens.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from proton import Delivery, Endpoint, Event, Handler, Message, Receiver, Sender

from devstack.servicebus import amqp, authz, cbs, deliveries, links
from devstack.servicebus.faults import (
    BUSY_DESCRIPTION,
    CONNECTION_FORCED,
    DETACH_FORCED,
    SERVER_BUSY,
    Faults,
)
from devstack.servicebus.links import LinkState, refuse, set_session_terminus
from devstack.servicebus.management import Management
from writeback.transport.memory import MemoryBroker, SessionLockLost

log = logging.getLogger(__name__)

HEARTBEAT = 1.0  # the timer runs at least this often

_F = TypeVar("_F", bound=Callable[..., None])


def guarded(method: _F) -> _F:
    """Keep the event loop alive when handling one event fails: log it and carry on."""

    @functools.wraps(method)
    def run(self: BrokerPump, event: Event) -> None:
        try:
            method(self, event)
        except Exception:
            log.exception("local Service Bus: %s failed", method.__name__)

    return run  # type: ignore[return-value]


class BrokerPump(Handler):  # type: ignore[misc]
    """The state of the broker's links and connections, and what runs after every event."""

    def __init__(
        self,
        broker: MemoryBroker,
        faults: Faults | None = None,
        policy: authz.Policy | None = None,
    ) -> None:
        super().__init__()
        self.broker = broker
        self.faults = faults or Faults()
        self.policy = policy or authz.root_policy()
        self.management = Management(broker, self._session_owner)
        self._links: dict[int, LinkState] = {}
        self._connections: list[Any] = []
        self._container: Any = None  # set by the handler once the reactor starts
        self._timer: Any = None
        self._timer_due = float("inf")
        self._stopping = False

    # -- the timer and the links kept ---------------------------------------------------------

    def _reschedule(self) -> None:
        """Make sure the timer fires by the next lock/TTL/session deadline (and every second)."""
        if self._stopping:
            return
        due = self.broker.tick()
        candidates = [self.faults.now() + HEARTBEAT]
        if due is not None:
            candidates.append(due)
        candidates += [s.waiting_until for s in self._links.values() if s.waiting_until]
        next_due = min(candidates)
        if next_due < self._timer_due - 0.001:
            if self._timer is not None:
                self._timer.cancel()
            delay = max(0.0, next_due - self.faults.now())
            self._timer = self._container.schedule(delay, self)
            self._timer_due = next_due

    def _forget_connection(self, connection: Any) -> None:
        for key, state in list(self._links.items()):
            if state.link.connection == connection:
                self._forget_link(key)
        if connection in self._connections:
            self._connections.remove(connection)
        self._pump()

    def _open(self, state: LinkState) -> None:
        state.waiting_until = None
        self._links[id(state)] = state
        state.link.sb_state = state
        if state.node.kind == "queue":
            state.link.max_message_size = amqp.MAX_MESSAGE_BYTES  # the SDK checks it first
        state.link.open()
        if state.link.is_receiver:
            state.link.flow(deliveries.INCOMING_CREDIT)

    def _forget_link(self, key: int) -> None:
        state = self._links.pop(key)
        if state.session_id is not None:
            self.broker.release_session(state.node.entity, state.session_id, state)
            state.session_id = None

    def _session_owner(self, entity: str, session_id: str, link_name: str | None) -> object:
        """The receiver link state holding a session (for session management operations)."""
        return links.session_holder(self._links.values(), entity, session_id, link_name)

    # -- deliveries ----------------------------------------------------------------------------

    def _pump(self) -> None:
        """Grant waiting session receivers, drop lost sessions, deliver within credit."""
        if self._stopping:
            return
        now = self.faults.now()
        self._detach_idle()
        for state in list(self._links.values()):
            if state.waiting_until is not None:
                self._retry_next_session(state, now)
            elif state.session_id is not None and not self._still_holds(state):
                self._lose_session(state)
            elif state.node.kind == "queue" and state.link.is_sender:
                self._deliver(state)
        self._reschedule()

    def _retry_next_session(self, state: LinkState, now: float) -> None:
        locked = self.broker.lock_session(state.node.entity, None, state)
        if locked is not None:
            state.session_id = locked[0]
            set_session_terminus(state, locked[1])
            self._open(state)
            self._deliver(state)
        elif state.waiting_until is not None and now >= state.waiting_until:
            del self._links[id(state)]
            refuse(
                state.link,
                "com.microsoft:timeout",
                "No session was available within the receiver's timeout.",
            )

    def _still_holds(self, state: LinkState) -> bool:
        if state.session_id is None:
            return False
        held = self.broker.session_locked_until(state.node.entity, state.session_id, state)
        return held is not None

    def _lose_session(self, state: LinkState) -> None:
        self._links.pop(id(state), None)
        state.session_id = None
        link = state.link
        if not link.state & Endpoint.LOCAL_CLOSED:
            link.condition = amqp.error(
                "com.microsoft:session-lock-lost", "The session lock has expired."
            )
            link.close()

    def _deliver(self, state: LinkState) -> None:
        link: Sender = state.link
        if not link.state & Endpoint.LOCAL_ACTIVE or link.state & Endpoint.LOCAL_CLOSED:
            return
        entity = state.node.entity
        while link.credit > 0:
            try:
                messages = self.broker.receive(entity, 1, session_id=state.session_id, owner=state)
            except SessionLockLost:
                # The lock lapsed since `_pump` looked (a delivery loop spans clock ticks):
                # Service Bus detaches the link, as for a lock found lapsed before.
                self._lose_session(state)
                return
            if not messages:
                break
            stored = messages[0]
            deliveries.send_locked(link, entity, stored, state.settle_on_send)
            if state.settle_on_send and stored.lock_token is not None:
                self.broker.complete(entity, stored.lock_token)  # receive-and-delete
        if link.drain_mode and link.credit > 0:
            link.drained()

    @guarded
    def on_delivery(self, event: Event) -> None:
        delivery: Delivery = event.delivery
        link = event.link
        state = getattr(link, "sb_state", None)
        if state is not None:
            state.last_used = time.monotonic()
        if link.is_receiver:
            if delivery.readable and not delivery.partial:
                self._incoming(link, delivery)
        elif delivery.updated:
            deliveries.settle(self.broker, delivery)
        self._pump()

    def _incoming(self, link: Receiver, delivery: Delivery) -> None:
        raw = deliveries.read(link, delivery)
        state: LinkState | None = getattr(link, "sb_state", None)
        if state is None:
            delivery.settle()
        elif state.node.kind == "queue" and self.faults.throttled():
            deliveries.reject(delivery, SERVER_BUSY, BUSY_DESCRIPTION)
        elif state.node.kind == "queue":
            deliveries.enqueue(self.broker, state.node.entity, delivery, raw)
        else:
            request = Message()
            request.decode(raw)
            delivery.update(Delivery.ACCEPTED)
            delivery.settle()
            if state.node.kind == "cbs":
                response = cbs.put_token(self.policy, link, request, self.faults.now())
            elif self.faults.throttled():
                response = amqp.reply(request, 503, BUSY_DESCRIPTION, condition=SERVER_BUSY)
            else:
                state.last_used = time.monotonic()
                response = self.management.answer(state.node.entity, request)
            links.respond(self._links.values(), state, request, response)

    # -- faults ---------------------------------------------------------------------------------

    @guarded
    def on_detach(self, event: Event) -> None:
        """Force-detach the links of one entity (every queue link when None), as Service Bus
        does when an entity is updated."""
        entity = event.subject
        for state in list(self._links.values()):
            if state.node.kind == "queue" and (
                entity is None or state.node.entity.lower() == str(entity).lower()
            ):
                self._force_detach(state, "The entity was updated.")

    def _detach_idle(self) -> None:
        """Force-detach queue links idle for `faults.link_idle`; close connections left
        without links for `faults.connection_idle` (Service Bus: 10 and 5 minutes)."""
        now = time.monotonic()
        for state in list(self._links.values()):
            if state.node.kind == "queue" and now - state.last_used >= self.faults.link_idle:
                idle = self.faults.link_idle
                self._force_detach(state, f"Idle timeout: {idle:.0f} seconds.")
        for connection in list(self._connections):
            if any(
                s.link.connection == connection and s.node.kind == "queue"
                for s in self._links.values()
            ):
                connection.sb_idle_since = None
            elif getattr(connection, "sb_idle_since", None) is None:
                connection.sb_idle_since = now
            elif now - connection.sb_idle_since >= self.faults.connection_idle:
                self._forget_connection(connection)
                connection.condition = amqp.error(
                    CONNECTION_FORCED,
                    "The connection was closed because it did not have any active links in "
                    f"the past {self.faults.connection_idle * 1000:.0f} milliseconds.",
                )
                connection.close()

    def _force_detach(self, state: LinkState, why: str) -> None:
        if id(state) in self._links:
            self._forget_link(id(state))
        link = state.link
        if not link.state & Endpoint.LOCAL_CLOSED:
            link.condition = amqp.error(
                DETACH_FORCED, f"The link '{link.name}' is force detached. {why}"
            )
            link.close()
