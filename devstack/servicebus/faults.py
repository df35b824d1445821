"""What Azure Service Bus does to clients now and then, injected by the local broker on demand.

Each switch follows a documented Service Bus behaviour, so the transport can be tested against it:
- idle links: a link with no send or receive for 10 minutes is force-detached
  (`amqp:link:detach-forced`), and a connection left without links for 5 minutes is closed
  (`amqp:connection:forced`); https://learn.microsoft.com/azure/service-bus-messaging/service-bus-amqp-troubleshoot.
  Tests shorten both (`link_idle`, `connection_idle`). `LocalServiceBus.detach()` force-detaches
  links at once, as updating an entity does.
- throttling: a Standard namespace answers `com.microsoft:server-busy` beyond 1,000 credits a
  second (https://learn.microsoft.com/azure/service-bus-messaging/service-bus-throttling);
  `busy(n)` refuses the next n operations (attach, send, management request) that way.
- clock skew: locks and expiries are judged on the service's clock, which the client's may not
  match; `clock_offset` puts the broker's clock that many seconds ahead of the host's.
Thread-safe: tests set switches from their own thread while the broker's loop reads them.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

LINK_IDLE_SECONDS = 600.0
CONNECTION_IDLE_SECONDS = 300.0
SERVER_BUSY = "com.microsoft:server-busy"
DETACH_FORCED = "amqp:link:detach-forced"
CONNECTION_FORCED = "amqp:connection:forced"
BUSY_DESCRIPTION = (
    "The request was terminated because the entity is being throttled. Error code: 50009. "
    "Please wait 2 seconds and try again."
)


@dataclass
class Faults:
    """The broker's fault switches (see the module docstring)."""

    link_idle: float = LINK_IDLE_SECONDS
    connection_idle: float = CONNECTION_IDLE_SECONDS
    clock_offset: float = 0.0
    _busy: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def now(self) -> float:
        """The broker's clock: the host's wall clock plus `clock_offset`."""
        return time.time() + self.clock_offset

    def busy(self, operations: int) -> None:
        """Answer the next `operations` operations with `com.microsoft:server-busy`."""
        with self._lock:
            self._busy = operations

    def throttled(self) -> bool:
        """Whether this operation is refused as throttled (counts one down)."""
        with self._lock:
            if self._busy <= 0:
                return False
            self._busy -= 1
            return True
