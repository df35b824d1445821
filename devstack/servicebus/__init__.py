"""A local Service Bus-compatible AMQP 1.0 broker for development and tests.

The unmodified azure-servicebus SDK (sync and `aio`) talks to it over plain AMQP on loopback with
the emulator connection string (`UseDevelopmentEmulator=true`): CBS, peek-lock, sessions,
dead-lettering, TTL, duplicate detection and the `$management` operations the project uses.
The queues are a `writeback.transport.memory.MemoryBroker`. It is a development tool only:
production always uses Azure Service Bus, and the same connection string also works against
Microsoft's official (Docker) emulator. It checks shared access signatures and per-queue rights
(`authz.Policy`; by default only the emulator's well-known root key, so it guards nothing and
must never listen on anything but loopback), and injects what Azure does on demand (`faults`:
throttling, forced and idle detaches, clock skew). See docs/local-servicebus.md for what it does
and does not emulate.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import threading
from collections.abc import Iterable
from types import TracebackType

from proton.reactor import ApplicationEvent, Container

from devstack.servicebus import authz
from devstack.servicebus.broker import LocalBrokerHandler
from devstack.servicebus.faults import Faults
from writeback.transport import HEARTBEATS_QUEUE, OUTCOMES_QUEUE, requests_queue
from writeback.transport.memory import MemoryBroker, QueueConfig

__all__ = ["Faults", "LocalServiceBus", "QueueConfig", "writeback_queues"]


def writeback_queues(
    domains: Iterable[str], *, lock_duration: float = 30.0, max_delivery_count: int = 5
) -> list[QueueConfig]:
    """The entities infra/ declares: a request queue per domain, the outcomes (sessions) and
    heartbeats queues. Tests shorten the lock to see redelivery quickly."""
    queues = [
        QueueConfig(
            requests_queue(domain),
            lock_duration=lock_duration,
            max_delivery_count=max_delivery_count,
            default_ttl=600,
            duplicate_detection_window=600,
            dead_letter_on_expiration=True,
        )
        for domain in domains
    ]
    return [
        *queues,
        # As infra/ declares them; not shortened with the request lock (a waiting session
        # receiver holds its session lock for the whole wait).
        QueueConfig(
            OUTCOMES_QUEUE,
            requires_session=True,
            lock_duration=30,
            max_delivery_count=5,
            default_ttl=300,
            dead_letter_on_expiration=True,
        ),
        QueueConfig(HEARTBEATS_QUEUE, lock_duration=30, max_delivery_count=5, default_ttl=300),
    ]


START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


class _PeerHungUp(logging.Filter):
    """Drop proton's ERROR records for a client that closed its socket right after sending
    `close` (the SDK does that routinely): they are normal here, not failures."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            message.startswith(("Couldn't send:", "Couldn't recv:"))
            and ("BrokenPipeError" in message or "ConnectionResetError" in message)
        )


_HUNG_UP = _PeerHungUp()


def is_loopback(host: str) -> bool:
    """Whether `host` names the IPv4 loopback (the only place the broker may listen)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.IPv4Address(host).is_loopback
    except ValueError:
        return False


class LocalServiceBus:
    """The broker on a daemon thread: `start()`, use `connection_string`, `stop()`."""

    def __init__(
        self,
        queues: Iterable[QueueConfig],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        policy: authz.Policy | None = None,
        faults: Faults | None = None,
    ) -> None:
        if not is_loopback(host):
            # Its keys are well known or test-made: anyone who can connect may read the queues.
            raise ValueError(f"the local Service Bus listens on loopback only, not {host!r}")
        self.faults = faults or Faults()
        self.policy = policy or authz.root_policy()
        self.broker = MemoryBroker(queues, clock=self.faults.now)
        self.host = host
        self._port = port
        self._handler: LocalBrokerHandler | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        """The port it listens on (the one the OS picked, when constructed with port 0)."""
        return self._handler.port if self._handler is not None else self._port

    @property
    def connection_string(self) -> str:
        """The emulator-style connection string: plain AMQP to this host and port, with the
        emulator's root key (every right)."""
        return self.connection_string_for(authz.ROOT_KEY_NAME)

    def connection_string_for(self, key_name: str) -> str:
        """A connection string with one of the policy's keys (an identity and its rights)."""
        return (
            f"Endpoint=sb://{self.host}:{self.port};SharedAccessKeyName={key_name};"
            f"SharedAccessKey={self.policy.key(key_name)};UseDevelopmentEmulator=true;"
        )

    def detach(self, queue: str | None = None) -> None:
        """Force-detach every link on `queue` (on every queue when None) with
        `amqp:link:detach-forced`, as Service Bus does when an entity is updated."""
        with self._lock:
            if self._handler is None:
                raise RuntimeError("the local Service Bus is not running")
            self._handler.injector.trigger(ApplicationEvent("detach", subject=queue))

    def start(self) -> None:
        """Run the broker's event loop on a daemon thread; return once it accepts connections."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("the local Service Bus is already running")
            logging.getLogger("proton").addFilter(_HUNG_UP)  # adding it twice is a no-op
            handler = LocalBrokerHandler(
                self.broker, self.host, self._port, self.faults, self.policy
            )
            container = Container(handler)
            thread = threading.Thread(
                target=container.run, name=f"local-servicebus-{self.host}", daemon=True
            )
            thread.start()
            if not handler.listening.wait(START_TIMEOUT) or handler.error is not None:
                thread.join(STOP_TIMEOUT)
                _close_pipe(handler)
                raise RuntimeError(
                    f"the local Service Bus could not listen on {self.host}:{self._port}"
                ) from handler.error
            # listen() has returned on the loop thread: the kernel is already accepting.
            self._handler, self._thread = handler, thread

    def stop(self) -> None:
        """Close every connection and the listener, end the loop and join its thread."""
        with self._lock:
            handler, thread = self._handler, self._thread
            if handler is None or thread is None:
                return
            handler.injector.trigger(ApplicationEvent("shutdown"))
            thread.join(STOP_TIMEOUT)
            if thread.is_alive():
                raise RuntimeError("the local Service Bus did not stop")
            _close_pipe(handler)
            self._handler = self._thread = None

    def __enter__(self) -> LocalServiceBus:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _close_pipe(handler: LocalBrokerHandler) -> None:
    """proton's EventInjector never closes its wake-up pipe; close it once the loop is gone."""
    for fd in handler.injector.pipe:
        with contextlib.suppress(OSError):
            os.close(fd)
