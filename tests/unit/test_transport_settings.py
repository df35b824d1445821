"""Service Bus settings reach the SDK as configured; the SDK's exceptions are all mapped."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.servicebus import TransportType
from azure.servicebus import exceptions as sb

from writeback.errors import (
    ConfigurationError,
    TransportError,
    TransportLockLost,
    TransportUnavailable,
)
from writeback.transport import requests_queue
from writeback.transport.servicebus import build_client, translate_servicebus_error
from writeback.transport.settings import PROXY_PASSWORD_ENV, ServiceBusSettings

LOCAL = (
    "Endpoint=sb://127.0.0.1:5672;SharedAccessKeyName=k;SharedAccessKey=v;"
    "UseDevelopmentEmulator=true;"
)


class Credential:
    """An Entra credential stand-in: build_client only stores it."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("token", 2_000_000_000)

    async def close(self) -> None:
        return None


def config(client: Any) -> Any:
    return client._config


def instantiate(cls: type[Exception]) -> Exception:
    """An SDK exception: some take a message, some only keywords."""
    try:
        return cls("boom")
    except TypeError:
        return cls(message="boom")


class TestClientOptions:
    async def test_websockets_on_443(self) -> None:
        """websockets = true makes the SDK speak AMQP over WebSockets."""
        settings = ServiceBusSettings.from_mapping(
            {"namespace": "corp-wb.servicebus.windows.net", "websockets": True}, environ={}
        )
        client = build_client(settings, Credential())  # type: ignore[arg-type]
        assert config(client).transport_type == TransportType.AmqpOverWebsocket
        assert config(client).hostname == "corp-wb.servicebus.windows.net/$servicebus/websocket"
        await client.close()

    async def test_proxy_is_passed_through(self) -> None:
        """A proxy (password from the environment) reaches the SDK and forces WebSockets."""
        settings = ServiceBusSettings.from_mapping(
            {
                "namespace": "corp-wb.servicebus.windows.net",
                "proxy": {"host": "proxy.corp.example.com", "port": 3128, "username": "relay"},
            },
            environ={PROXY_PASSWORD_ENV: "proxy-secret"},
        )
        client = build_client(settings, Credential())  # type: ignore[arg-type]
        assert config(client).http_proxy == {
            "proxy_hostname": "proxy.corp.example.com",
            "proxy_port": 3128,
            "username": "relay",
            "password": "proxy-secret",
        }
        assert config(client).transport_type == TransportType.AmqpOverWebsocket
        assert "proxy-secret" not in repr(settings)
        await client.close()

    async def test_plain_amqp_by_default_and_retry_policy(self) -> None:
        """Without websockets the SDK's default transport stays; retries are ours."""
        settings = ServiceBusSettings.from_mapping(
            {"connection_string": LOCAL, "retry_total": 5, "retry_backoff_max": 30}, environ={}
        )
        client = build_client(settings, None)
        assert config(client).transport_type == TransportType.Amqp
        assert (config(client).retry_total, config(client).retry_backoff_max) == (5, 30)
        assert config(client).use_tls is False  # UseDevelopmentEmulator=true
        await client.close()

    def test_the_lock_duration_is_infras_unless_set(self) -> None:
        """The request queue's lock duration is 30 s (as infra/ deploys it) unless configured;
        one Service Bus would refuse is refused, naming the setting."""
        default = ServiceBusSettings.from_mapping({"connection_string": LOCAL}, environ={})
        assert default.lock_duration == 30.0
        for wrong in (0, 301, "30"):
            with pytest.raises(ConfigurationError, match=r"servicebus\.lock_duration"):
                ServiceBusSettings.from_mapping(
                    {"connection_string": LOCAL, "lock_duration": wrong}, environ={}
                )

    def test_connection_string_from_the_environment_is_hidden(self) -> None:
        """The connection string may come from the environment and never shows in a repr."""
        settings = ServiceBusSettings.from_mapping(
            {}, environ={"WRITEBACK_SERVICEBUS_CONNECTION_STRING": LOCAL}
        )
        assert settings.connection_string == LOCAL
        assert "SharedAccessKey" not in repr(settings)


class TestValidation:
    @pytest.mark.parametrize(
        ("table", "setting"),
        [
            ({}, "servicebus.namespace"),
            (
                {"namespace": "ns.servicebus.windows.net", "connection_string": LOCAL},
                "servicebus.namespace",
            ),
            ({"namespace": "not-qualified"}, "servicebus.namespace"),
            ({"connection_string": "nonsense"}, "servicebus.connection_string"),
            ({"connection_string": LOCAL, "websockets": "yes"}, "servicebus.websockets"),
            ({"connection_string": LOCAL, "proxy": {"host": "p"}}, "servicebus.proxy.port"),
            (
                {"connection_string": LOCAL, "proxy": {"host": "p", "port": 3128, "username": "u"}},
                "servicebus.proxy.username",
            ),
            ({"connection_string": LOCAL, "retry_total": -1}, "servicebus.retry_total"),
            ({"connection_string": LOCAL, "queue": "x"}, "servicebus.queue"),
        ],
    )
    def test_bad_settings_are_named(self, table: dict[str, Any], setting: str) -> None:
        """Each bad setting stops start-up with its name."""
        with pytest.raises(ConfigurationError) as caught:
            ServiceBusSettings.from_mapping(table, environ={})
        assert caught.value.setting == setting

    def test_queue_names(self) -> None:
        """Each domain has its own request queue, named after it."""
        assert requests_queue("Corp.Example.com") == "writeback-requests-corp.example.com"


class TestErrorMapping:
    @pytest.mark.parametrize(
        "cls",
        [
            cls
            for _, cls in inspect.getmembers(sb, inspect.isclass)
            if issubclass(cls, Exception) and cls.__module__ == sb.__name__
        ],
        ids=lambda c: c.__name__,
    )
    def test_every_servicebus_exception_is_mapped(self, cls: type[Exception]) -> None:
        """Whatever the SDK raises becomes a TransportError naming the operation."""
        translated = translate_servicebus_error(instantiate(cls), "receive from q")
        assert isinstance(translated, TransportError)
        assert str(translated).startswith("receive from q: ")

    @pytest.mark.parametrize(
        ("cls", "kind"),
        [
            (sb.MessageLockLostError, TransportLockLost),
            (sb.SessionLockLostError, TransportLockLost),
            (sb.ServiceBusConnectionError, TransportUnavailable),
            (sb.OperationTimeoutError, TransportUnavailable),
            (sb.ServiceBusAuthenticationError, TransportUnavailable),
            (sb.MessagingEntityNotFoundError, TransportUnavailable),
        ],
    )
    def test_kinds(self, cls: type[Exception], kind: type[TransportError]) -> None:
        """Lost locks and unavailability are told apart: settle nothing, or retry."""
        assert isinstance(translate_servicebus_error(instantiate(cls), "op"), kind)
