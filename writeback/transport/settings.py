"""How to reach Service Bus: namespace + Entra credential, or a connection string; the network path.

Production connects with an `azure-identity` credential to a namespace (no secret on disk); a
connection string is for development (including the official emulator's and the local broker's
`UseDevelopmentEmulator=true`). Relays behind a firewall that only opens 443 use AMQP over
WebSockets, optionally through an HTTP proxy. Every problem names its setting.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from azure.servicebus import TransportType

from writeback.errors import ConfigurationError
from writeback.transport import LOCK_SECONDS

CONNECTION_STRING_ENV = "WRITEBACK_SERVICEBUS_CONNECTION_STRING"
PROXY_PASSWORD_ENV = "WRITEBACK_SERVICEBUS_PROXY_PASSWORD"  # noqa: S105 - the variable's name
MIN_LOCK_SECONDS = 1.0  # short locks are for tests against the local broker
MAX_LOCK_SECONDS = 300.0


@dataclass(frozen=True)
class Proxy:
    """An HTTP CONNECT proxy for AMQP over WebSockets."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ServiceBusSettings:
    namespace: str | None = None
    connection_string: str | None = field(default=None, repr=False)
    websockets: bool = False
    proxy: Proxy | None = None
    retry_total: int = 3
    retry_backoff: float = 0.8
    retry_backoff_max: float = 60.0
    # The domain's request queue's LockDuration (infra/: PT30S). The relay renews a lock every
    # half of it, timed on its own clock: the service's locked-until is on the service's clock.
    lock_duration: float = LOCK_SECONDS

    @classmethod
    def from_mapping(
        cls,
        table: Mapping[str, object],
        section: str = "servicebus",
        environ: Mapping[str, str] = os.environ,
    ) -> ServiceBusSettings:
        """From the `[servicebus]` table; the connection string may come from the environment."""
        known = {
            "namespace",
            "connection_string",
            "websockets",
            "proxy",
            "retry_total",
            "retry_backoff",
            "retry_backoff_max",
            "lock_duration",
        }
        for key in table:
            if key not in known:
                raise ConfigurationError(f"{section}.{key}", "unknown setting")
        namespace = table.get("namespace")
        connection_string = table.get("connection_string") or environ.get(CONNECTION_STRING_ENV)
        if bool(namespace) == bool(connection_string):
            raise ConfigurationError(
                f"{section}.namespace",
                f"set either namespace (production, with an Entra credential) or a connection "
                f"string ({section}.connection_string or {CONNECTION_STRING_ENV}), not both",
            )
        if namespace is not None and (not isinstance(namespace, str) or "." not in namespace):
            raise ConfigurationError(
                f"{section}.namespace",
                "the fully qualified namespace, e.g. corp-writeback.servicebus.windows.net",
            )
        if connection_string is not None and (
            not isinstance(connection_string, str) or "Endpoint=" not in connection_string
        ):
            raise ConfigurationError(
                f"{section}.connection_string", "not a Service Bus connection string (no Endpoint=)"
            )
        websockets = table.get("websockets", False)
        if not isinstance(websockets, bool):
            raise ConfigurationError(f"{section}.websockets", "must be true or false")
        return cls(
            namespace=namespace if isinstance(namespace, str) else None,
            connection_string=connection_string if isinstance(connection_string, str) else None,
            websockets=websockets,
            proxy=_proxy(table.get("proxy"), f"{section}.proxy", environ),
            retry_total=int(_number(table, section, "retry_total", 3)),
            retry_backoff=_number(table, section, "retry_backoff", 0.8),
            retry_backoff_max=_number(table, section, "retry_backoff_max", 60.0),
            lock_duration=_lock_duration(table, section),
        )

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for `ServiceBusClient`: transport, proxy and retry policy."""
        options: dict[str, Any] = {
            "retry_total": self.retry_total,
            "retry_backoff_factor": self.retry_backoff,
            "retry_backoff_max": self.retry_backoff_max,
            "retry_mode": "exponential",
        }
        if self.websockets or self.proxy:
            # AMQP over WebSockets uses port 443, the one outbound port a relay may have.
            options["transport_type"] = TransportType.AmqpOverWebsocket
        if self.proxy:
            proxy: dict[str, Any] = {
                "proxy_hostname": self.proxy.host,
                "proxy_port": self.proxy.port,
            }
            if self.proxy.username:
                proxy["username"] = self.proxy.username
                proxy["password"] = self.proxy.password
            options["http_proxy"] = proxy
        return options


def _proxy(value: object, setting: str, environ: Mapping[str, str]) -> Proxy | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigurationError(setting, "a table with host and port (and optional username)")
    host, port, username = value.get("host"), value.get("port"), value.get("username")
    if not isinstance(host, str) or not host:
        raise ConfigurationError(f"{setting}.host", "required, the proxy's host name")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigurationError(f"{setting}.port", "required, a TCP port number")
    if username is not None and not isinstance(username, str):
        raise ConfigurationError(f"{setting}.username", "must be a string")
    password = environ.get(PROXY_PASSWORD_ENV) if username else None
    if username and not password:
        raise ConfigurationError(
            f"{setting}.username", f"set {PROXY_PASSWORD_ENV} to the proxy password"
        )
    return Proxy(host, port, username or None, password)


def _lock_duration(table: Mapping[str, object], section: str) -> float:
    # Service Bus takes a lock duration of at most 5 minutes (ServiceBusQueueData.LockDuration,
    # https://learn.microsoft.com/dotnet/api/azure.resourcemanager.servicebus.servicebusqueuedata.lockduration).
    seconds = _number(table, section, "lock_duration", LOCK_SECONDS)
    if not MIN_LOCK_SECONDS <= seconds <= MAX_LOCK_SECONDS:
        raise ConfigurationError(
            f"{section}.lock_duration",
            f"the request queue's lock duration in seconds, {MIN_LOCK_SECONDS:.0f} to "
            f"{MAX_LOCK_SECONDS:.0f} (infra/ sets 30)",
        )
    return seconds


def _number(table: Mapping[str, object], section: str, key: str, default: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigurationError(f"{section}.{key}", "must be a non-negative number")
    return float(value)
