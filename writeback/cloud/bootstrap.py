"""The one place the cloud side's adapters are chosen and wired: settings in, a `Cloud` out.

`build(environ)` reads the app settings (`CloudSettings.from_env`), then makes the Service Bus
transport, the Key Vault (or local) key source, the audit and agents tables and the
authenticator. Nothing connects here: every client opens its connection on first use, so a
cold start costs no round trip and a bad setting is reported before any network is touched.
Tests and the local host pass their own adapters to `WritebackService` instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from azure.identity.aio import DefaultAzureCredential

from writeback.cloud.agents import TableAgentRegistry
from writeback.cloud.audit import TableAuditTrail
from writeback.cloud.auth import Authenticator
from writeback.cloud.secrets import CloudKeys, build_secret_source
from writeback.cloud.service import WritebackService
from writeback.cloud.settings import CloudSettings, EventSettings, Storage
from writeback.cloud.tables import Table
from writeback.cloud.telemetry import Telemetry, configure
from writeback.transport.servicebus import ServiceBusCloud

# The Azure SDK logs every HTTP request and response it sends (URL, headers) at INFO: one table
# write is two log lines to format, and in Azure two traces to ship to Application Insights, for
# each of the several table writes of every writeback request. Its warnings and errors still
# come through.
QUIETED_SDK_LOGGERS = ("azure.core.pipeline.policies.http_logging_policy",)


@dataclass
class Cloud:
    """What the HTTP and trigger handlers use."""

    service: WritebackService
    authenticator: Authenticator
    telemetry: Telemetry
    # The event triggers' settings, read from the same app settings as the rest.
    events: EventSettings = field(default_factory=EventSettings)

    async def close(self) -> None:
        await self.service.transport.close()
        await self.service.audit.close()
        await self.service.agents.close()
        await self.authenticator.close()
        close = getattr(self.service.keys, "close", None)
        if close is not None:
            await close()


def _tables(storage: Storage, credential: Any) -> tuple[Table, Table]:
    if storage.connection_string:
        return (
            Table.from_connection_string(storage.connection_string, storage.audit_table),
            Table.from_connection_string(storage.connection_string, storage.agents_table),
        )
    endpoint = storage.table_endpoint or ""
    return (
        Table.from_endpoint(endpoint, credential, storage.audit_table),
        Table.from_endpoint(endpoint, credential, storage.agents_table),
    )


async def build(environ: Mapping[str, str]) -> Cloud:
    """The cloud side as the app settings describe it."""
    settings = CloudSettings.from_env(environ)
    configure(settings.appinsights, settings.appinsights_authentication)
    for name in QUIETED_SDK_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    credential = DefaultAzureCredential()  # managed identity in Azure; unused with strings
    audit_table, agents_table = _tables(settings.storage, credential)
    service = WritebackService(
        routes=settings.routes,
        transport=ServiceBusCloud(
            settings.servicebus, None if settings.servicebus.connection_string else credential
        ),
        keys=CloudKeys(
            build_secret_source(settings.keys), refresh_seconds=settings.keys.refresh_seconds
        ),
        audit=TableAuditTrail(audit_table),
        agents=TableAgentRegistry(agents_table),
        settings=settings.service,
    )
    return Cloud(service, Authenticator(settings.auth), Telemetry(), settings.events)
