"""The proton event handler of the local Service Bus broker: connections, links, sessions, timers.

It runs on the container's single thread and turns AMQP into calls on the queue model
(`writeback.transport.memory.MemoryBroker`): client senders enqueue, client receivers get
peek-locked deliveries within their link credit, and their dispositions settle the locks
(`deliveries.py`). Session receivers lock their session at attach (named, or the next available
one, waiting up to the receiver's `com.microsoft:timeout`). `$cbs` judges tokens and each link is
authorised against them (`authz.py`); `$management` answers the operations in `management.py`.
A timer applies lock and TTL expiry and detaches idle links; the fault switches (`faults.py`)
throttle, detach and skew the clock on demand. It never logs message bodies or tokens.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from proton import (
    Delivery,
    Endpoint,
    Event,
    Handler,
    Link,
    Message,
    Receiver,
    Sender,
    Terminus,
)
from proton.reactor import ApplicationEvent, EventInjector

from devstack.servicebus import amqp, authz, deliveries
from devstack.servicebus.faults import (
    BUSY_DESCRIPTION,
    CONNECTION_FORCED,
    DETACH_FORCED,
    SERVER_BUSY,
    Faults,
)
from devstack.servicebus.management import Management
from writeback.transport.memory import MemoryBroker, SessionCannotBeLocked, UnknownQueue

log = logging.getLogger(__name__)

NEXT_SESSION_WAIT = 5.0  # seconds a next-available receiver waits when it gave no timeout
NEXT_SESSION_WAIT_MAX = 60.0
HEARTBEAT = 1.0  # the timer runs at least this often

_F = TypeVar("_F", bound=Callable[..., None])


def _guarded(method: _F) -> _F:
    """Keep the event loop alive when handling one event fails: log it and carry on."""

    @functools.wraps(method)
    def run(self: LocalBrokerHandler, event: Event) -> None:
        try:
            method(self, event)
        except Exception:
            log.exception("local Service Bus: %s failed", method.__name__)

    return run  # type: ignore[return-value]


@dataclass(eq=False)
class LinkState:
    """Our bookkeeping for one attached link; it is also the owner of a session lock."""

    link: Link
    node: amqp.Node
    session_id: str | None = None
    waiting_until: float | None = None  # a next-available receiver not yet given a session
    settle_on_send: bool = False  # receive-and-delete
    last_used: float = 0.0  # monotonic: the last send, receive or settlement on it


class LocalBrokerHandler(Handler):  # type: ignore[misc]
    """Serve AMQP 1.0 connections against `broker`; `listening` is set once accepting."""

    def __init__(
        self,
        broker: MemoryBroker,
        host: str,
        port: int,
        faults: Faults | None = None,
        policy: authz.Policy | None = None,
    ) -> None:
        super().__init__()
        self.broker = broker
        self.faults = faults or Faults()
        self.policy = policy or authz.root_policy()
        self.management = Management(broker, self._session_owner)
        self.host, self.port = host, port
        self.listening = threading.Event()
        self.error: BaseException | None = None
        self.injector = EventInjector()
        self._acceptor: Any = None
        self._links: dict[int, LinkState] = {}
        self._connections: list[Any] = []
        self._container: Any = None
        self._timer: Any = None
        self._timer_due = float("inf")
        self._loop_thread: int | None = None
        self._stopping = False

    # -- start, stop, wake-ups -----------------------------------------------------------------

    def on_reactor_init(self, event: Event) -> None:
        self._loop_thread = threading.get_ident()
        self._container = event.container
        try:
            self._acceptor = event.container.listen(f"{self.host}:{self.port}")
            # Port 0 asks the OS for a free port; read back the one the listener got.
            self.port = self._acceptor._selectable._delegate.getsockname()[1]
        except Exception as exc:  # handed to start(), which raises it
            self.error = exc
            self.injector.close()
            self.listening.set()
            return
        event.container.selectable(self.injector)
        self.broker.add_listener(self._broker_changed)
        self._reschedule()
        self.listening.set()

    def _broker_changed(self) -> None:
        # Changes made on the loop thread are pumped there; others (tests calling the model
        # directly) wake the loop through the injector's pipe.
        if threading.get_ident() != self._loop_thread and not self._stopping:
            self.injector.trigger(ApplicationEvent("broker_changed"))

    @_guarded
    def on_broker_changed(self, event: Event) -> None:
        self._pump()

    @_guarded
    def on_shutdown(self, event: Event) -> None:
        """Close the listener and every connection, then let the loop run dry and end."""
        self._stopping = True
        self.broker.remove_listener(self._broker_changed)
        if self._timer is not None:
            self._timer.cancel()
        if self._acceptor is not None:
            self._acceptor.close()
        for connection in list(self._connections):
            self._forget_connection(connection)
            if not connection.state & Endpoint.LOCAL_CLOSED:
                connection.close()
            transport = connection.transport
            if transport is not None:
                transport.close_tail()
                transport.close_head()
        self.injector.close()

    @_guarded
    def on_timer_task(self, event: Event) -> None:
        self._timer = None
        self._timer_due = float("inf")
        self._pump()

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

    # -- connections and sessions ----------------------------------------------------------------

    @_guarded
    def on_connection_bound(self, event: Event) -> None:
        # Service Bus clients authenticate through $cbs (ANONYMOUS + put-token), not SASL.
        sasl = event.transport.sasl()
        sasl.allowed_mechs("ANONYMOUS")  # PLAIN needs Cyrus SASL, which this proton lacks
        sasl.allow_insecure_mechs = True

    @_guarded
    def on_connection_remote_open(self, event: Event) -> None:
        connection = event.connection
        if connection.state & Endpoint.LOCAL_UNINIT:
            connection.container = "local-servicebus"
            connection.open()
            self._connections.append(connection)

    @_guarded
    def on_session_remote_open(self, event: Event) -> None:
        if event.session.state & Endpoint.LOCAL_UNINIT:
            event.session.open()

    @_guarded
    def on_session_remote_close(self, event: Event) -> None:
        if not event.session.state & Endpoint.LOCAL_CLOSED:
            event.session.close()

    @_guarded
    def on_connection_remote_close(self, event: Event) -> None:
        self._forget_connection(event.connection)
        if not event.connection.state & Endpoint.LOCAL_CLOSED:
            event.connection.close()

    @_guarded
    def on_transport_closed(self, event: Event) -> None:
        if event.connection is not None:
            self._forget_connection(event.connection)

    def _forget_connection(self, connection: Any) -> None:
        for key, state in list(self._links.items()):
            if state.link.connection == connection:
                self._forget_link(key)
        if connection in self._connections:
            self._connections.remove(connection)
        self._pump()

    # -- links ---------------------------------------------------------------------------------

    @_guarded
    def on_link_remote_open(self, event: Event) -> None:
        link = event.link
        if not link.state & Endpoint.LOCAL_UNINIT:
            return
        address = link.remote_source.address if link.is_sender else link.remote_target.address
        node = amqp.parse_address(address)
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        link.snd_settle_mode = link.remote_snd_settle_mode
        link.rcv_settle_mode = link.remote_rcv_settle_mode
        state = LinkState(link, node, last_used=time.monotonic())
        if node.kind != "cbs" and self.faults.throttled():
            self._refuse(link, SERVER_BUSY, BUSY_DESCRIPTION)
            return
        if node.kind != "cbs" and not self._authorised(link, node):
            return
        if node.kind != "cbs":
            try:
                config = self.broker.queue(node.entity)
            except UnknownQueue:
                self._refuse(
                    link,
                    "amqp:not-found",
                    f"The messaging entity '{node.entity}' could not be found.",
                )
                return
            if (
                node.kind == "queue"
                and link.is_receiver
                and config.name.endswith("$DeadLetterQueue")
            ):
                self._refuse(link, "amqp:not-allowed", "Cannot send to a dead-letter sub-queue.")
                return
            if node.kind == "queue" and link.is_sender:
                state.settle_on_send = link.remote_snd_settle_mode == Link.SND_SETTLED
                if config.requires_session and not self._attach_session(state):
                    return
        self._open(state)
        self._pump()

    def _authorised(self, link: Link, node: amqp.Node) -> bool:
        """Whether the connection's tokens allow this link (refused with Service Bus's
        condition and wording otherwise): Send to send to a queue, Listen for the rest."""
        right = authz.SEND if node.kind == "queue" and link.is_receiver else authz.LISTEN
        grants = getattr(link.connection, "sb_grants", [])
        if authz.authorised(grants, self.policy, node.entity, right, self.faults.now()):
            return True
        self._refuse(
            link,
            "amqp:unauthorized-access",
            f"Unauthorized access. '{right}' claim(s) are required to perform this operation.",
        )
        return False

    def _attach_session(self, state: LinkState) -> bool:
        """Lock the session a receiver asked for; False when the attach was refused or held."""
        link = state.link
        asked, session_id = amqp.session_filter(_filters(link.remote_source))
        if not asked:
            self._refuse(
                link,
                "amqp:not-allowed",
                "The entity requires sessions: open a session receiver.",
            )
            return False
        try:
            locked = self.broker.lock_session(state.node.entity, session_id, state)
        except SessionCannotBeLocked:
            self._refuse(
                link,
                "com.microsoft:session-cannot-be-locked",
                f"The requested session '{session_id}' cannot be accepted. "
                "It may be locked by another receiver.",
            )
            return False
        if locked is None:
            properties = link.remote_properties or {}
            wait_ms = properties.get(amqp.OPERATION_TIMEOUT)
            wait = NEXT_SESSION_WAIT if wait_ms is None else float(wait_ms) / 1000
            state.waiting_until = self.faults.now() + min(wait, NEXT_SESSION_WAIT_MAX)
            self._links[id(state)] = state
            self._reschedule()
            return False
        state.session_id = locked[0]
        self._set_session_terminus(state, locked[1])
        return True

    def _set_session_terminus(self, state: LinkState, locked_until: float) -> None:
        link = state.link
        filters = _filters(link.remote_source) or {}
        filters[amqp.SESSION_FILTER] = state.session_id
        link.source.filter.clear()
        link.source.filter.put_object(filters)
        link.properties = {amqp.LOCKED_UNTIL_UTC: amqp.to_ticks(locked_until)}

    def _open(self, state: LinkState) -> None:
        state.waiting_until = None
        self._links[id(state)] = state
        state.link.sb_state = state
        if state.node.kind == "queue":
            state.link.max_message_size = amqp.MAX_MESSAGE_BYTES  # the SDK checks it first
        state.link.open()
        if state.link.is_receiver:
            state.link.flow(deliveries.INCOMING_CREDIT)

    @staticmethod
    def _refuse(link: Link, condition: str, description: str) -> None:
        # As Service Bus does: attach with a null terminus, then detach with the error. pyamqp
        # then fails the link with that condition, and the SDK maps it to its exception (an
        # echoed terminus would let a sender count as attached and lose the condition).
        link.source.type = Terminus.UNSPECIFIED
        link.target.type = Terminus.UNSPECIFIED
        link.open()
        link.condition = amqp.error(condition, description)
        link.close()

    @_guarded
    def on_link_remote_close(self, event: Event) -> None:
        state = getattr(event.link, "sb_state", None)
        for key, candidate in list(self._links.items()):
            if candidate is state or candidate.link == event.link:
                self._forget_link(key)
        if not event.link.state & Endpoint.LOCAL_CLOSED:
            event.link.close()
        self._pump()

    def _forget_link(self, key: int) -> None:
        state = self._links.pop(key)
        if state.session_id is not None:
            self.broker.release_session(state.node.entity, state.session_id, state)
            state.session_id = None

    def _session_owner(self, entity: str, session_id: str, link_name: str | None) -> object:
        """The receiver link state holding a session (for session management operations)."""
        holders = [
            s
            for s in self._links.values()
            if s.session_id == session_id and s.node.entity.lower() == entity.lower()
        ]
        named = [s for s in holders if link_name is not None and s.link.name == link_name]
        return (named or holders or [None])[0]

    @_guarded
    def on_link_flow(self, event: Event) -> None:
        state = getattr(event.link, "sb_state", None)
        if state is not None:
            state.last_used = time.monotonic()
        self._pump()

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
            self._set_session_terminus(state, locked[1])
            self._open(state)
            self._deliver(state)
        elif state.waiting_until is not None and now >= state.waiting_until:
            del self._links[id(state)]
            self._refuse(
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
            messages = self.broker.receive(entity, 1, session_id=state.session_id, owner=state)
            if not messages:
                break
            stored = messages[0]
            deliveries.send_locked(link, entity, stored, state.settle_on_send)
            if state.settle_on_send and stored.lock_token is not None:
                self.broker.complete(entity, stored.lock_token)  # receive-and-delete
        if link.drain_mode and link.credit > 0:
            link.drained()

    @_guarded
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
                response = self._put_token(link, request)
            elif self.faults.throttled():
                response = amqp.reply(request, 503, BUSY_DESCRIPTION, condition=SERVER_BUSY)
            else:
                state.last_used = time.monotonic()
                response = self.management.answer(state.node.entity, request)
            self._respond(state, request, response)

    def _put_token(self, link: Link, request: Message) -> Message:
        """Judge a CBS put-token; remember what it grants on this connection."""
        properties = {str(k): v for k, v in (request.properties or {}).items()}
        try:
            grant = self.policy.accept(
                str(request.body),
                str(properties.get("type", "")),
                str(properties.get("name", "")),
                self.faults.now(),
            )
        except (authz.TokenRefused, ValueError) as exc:
            log.info("local Service Bus: token refused: %s", type(exc).__name__)
            return amqp.reply(request, 401, str(exc))
        grants = getattr(link.connection, "sb_grants", None)
        if grants is None:
            grants = link.connection.sb_grants = []
        grants.append(grant)
        return amqp.reply(request, 200, "OK")

    # -- faults ---------------------------------------------------------------------------------

    @_guarded
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

    def _respond(self, state: LinkState, request: Message, response: Message) -> None:
        """Send a reply on the same connection: the link whose target is the request's
        reply-to, else any link reading from the same node."""
        candidates = [
            s
            for s in self._links.values()
            if s.link.connection == state.link.connection
            and s.link.is_sender
            and s.node == state.node
        ]
        preferred = [s for s in candidates if s.link.remote_target.address == request.reply_to]
        for candidate in preferred + candidates:
            candidate.link.send(response)
            return
        log.warning("local Service Bus: no reply link for a %s request", state.node.kind)


def _filters(terminus: Any) -> dict[Any, Any] | None:
    data = terminus.filter
    data.rewind()
    if not data.next():
        return None
    value = data.get_object()
    return dict(value) if isinstance(value, dict) else None
