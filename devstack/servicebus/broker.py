"""The proton event handler of the local Service Bus broker: start, stop, connections, attaches.

It runs on the container's single thread and turns AMQP into calls on the queue model
(`writeback.transport.memory.MemoryBroker`): client senders enqueue, client receivers get
peek-locked deliveries within their link credit, and their dispositions settle the locks
(`deliveries.py`). This module is the upper layer of the handler: it listens, wakes the loop
when the model changes from another thread, shuts down, opens connections and sessions, and
attaches links. Session receivers lock their session at attach (named, or the next available
one, waiting up to the receiver's `com.microsoft:timeout`); each link is authorised against the
tokens put on `$cbs` (`cbs.py`, judged by `authz.py`). Everything that runs after an event
(delivery, settlement, `$management` requests in `management.py`, the timer applying lock and
TTL expiry, and the fault switches of `faults.py`) is the layer below, `pump.py`. It never
logs message bodies or tokens.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from proton import Endpoint, Event, Link
from proton.reactor import ApplicationEvent, EventInjector

from devstack.servicebus import amqp, authz, cbs
from devstack.servicebus.faults import BUSY_DESCRIPTION, SERVER_BUSY, Faults
from devstack.servicebus.links import LinkState, refuse, set_session_terminus, terminus_filters
from devstack.servicebus.pump import BrokerPump, guarded
from writeback.transport.memory import MemoryBroker, SessionCannotBeLocked, UnknownQueue

NEXT_SESSION_WAIT = 5.0  # seconds a next-available receiver waits when it gave no timeout
NEXT_SESSION_WAIT_MAX = 60.0


class LocalBrokerHandler(BrokerPump):
    """Serve AMQP 1.0 connections against `broker`; `listening` is set once accepting."""

    def __init__(
        self,
        broker: MemoryBroker,
        host: str,
        port: int,
        faults: Faults | None = None,
        policy: authz.Policy | None = None,
    ) -> None:
        super().__init__(broker, faults, policy)
        self.host, self.port = host, port
        self.listening = threading.Event()
        self.error: BaseException | None = None
        self.injector = EventInjector()
        self._acceptor: Any = None
        self._loop_thread: int | None = None

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

    @guarded
    def on_broker_changed(self, event: Event) -> None:
        self._pump()

    @guarded
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

    @guarded
    def on_timer_task(self, event: Event) -> None:
        self._timer = None
        self._timer_due = float("inf")
        self._pump()

    # -- connections and sessions ----------------------------------------------------------------

    @guarded
    def on_connection_bound(self, event: Event) -> None:
        # Service Bus clients authenticate through $cbs (ANONYMOUS + put-token), not SASL.
        sasl = event.transport.sasl()
        sasl.allowed_mechs("ANONYMOUS")  # PLAIN needs Cyrus SASL, which this proton lacks
        sasl.allow_insecure_mechs = True

    @guarded
    def on_connection_remote_open(self, event: Event) -> None:
        connection = event.connection
        if connection.state & Endpoint.LOCAL_UNINIT:
            connection.container = "local-servicebus"
            connection.open()
            self._connections.append(connection)

    @guarded
    def on_session_remote_open(self, event: Event) -> None:
        if event.session.state & Endpoint.LOCAL_UNINIT:
            event.session.open()

    @guarded
    def on_session_remote_close(self, event: Event) -> None:
        if not event.session.state & Endpoint.LOCAL_CLOSED:
            event.session.close()

    @guarded
    def on_connection_remote_close(self, event: Event) -> None:
        self._forget_connection(event.connection)
        if not event.connection.state & Endpoint.LOCAL_CLOSED:
            event.connection.close()

    @guarded
    def on_transport_closed(self, event: Event) -> None:
        if event.connection is not None:
            self._forget_connection(event.connection)

    # -- links ---------------------------------------------------------------------------------

    @guarded
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
            refuse(link, SERVER_BUSY, BUSY_DESCRIPTION)
            return
        if node.kind != "cbs" and not cbs.authorised(self.policy, link, node, self.faults.now()):
            return
        if node.kind != "cbs":
            try:
                config = self.broker.queue(node.entity)
            except UnknownQueue:
                refuse(
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
                refuse(link, "amqp:not-allowed", "Cannot send to a dead-letter sub-queue.")
                return
            if node.kind == "queue" and link.is_sender:
                state.settle_on_send = link.remote_snd_settle_mode == Link.SND_SETTLED
                if config.requires_session and not self._attach_session(state):
                    return
        self._open(state)
        self._pump()

    def _attach_session(self, state: LinkState) -> bool:
        """Lock the session a receiver asked for; False when the attach was refused or held."""
        link = state.link
        asked, session_id = amqp.session_filter(terminus_filters(link.remote_source))
        if not asked:
            refuse(
                link,
                "amqp:not-allowed",
                "The entity requires sessions: open a session receiver.",
            )
            return False
        try:
            locked = self.broker.lock_session(state.node.entity, session_id, state)
        except SessionCannotBeLocked:
            refuse(
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
        set_session_terminus(state, locked[1])
        return True

    @guarded
    def on_link_remote_close(self, event: Event) -> None:
        state = getattr(event.link, "sb_state", None)
        for key, candidate in list(self._links.items()):
            if candidate is state or candidate.link == event.link:
                self._forget_link(key)
        if not event.link.state & Endpoint.LOCAL_CLOSED:
            event.link.close()
        self._pump()

    @guarded
    def on_link_flow(self, event: Event) -> None:
        state = getattr(event.link, "sb_state", None)
        if state is not None:
            state.last_used = time.monotonic()
        self._pump()
