"""The transport on Azure Service Bus (azure-servicebus, asyncio).

Cloud side (`cloud.ServiceBusCloud`): requests go to the domain's queue with MessageId = request
id (duplicate detection drops a resend) and a time-to-live that ends at the request's deadline;
outcomes come back on the instance's reply session, held open by one background receiver for
the instance's lifetime (see `writeback.transport`). Relay side (`relay.ServiceBusRelay`):
peek-lock receive, lock renewal, complete / abandon / dead-letter, outcomes and heartbeats.
Clients, senders and receivers are created lazily (nothing connects at import or construction)
and reused. The SDK's exceptions become `TransportError`s in `translate_servicebus_error` and
nowhere else. Message bodies are opaque signed tokens and are never logged.
"""

from writeback.transport.servicebus.bus import (
    CONTENT_TYPE,
    HEARTBEAT_TTL,
    OUTCOME_TTL,
    build_client,
    probe,
    translate_servicebus_error,
)
from writeback.transport.servicebus.cloud import ServiceBusCloud
from writeback.transport.servicebus.relay import ServiceBusRelay

__all__ = [
    "CONTENT_TYPE",
    "HEARTBEAT_TTL",
    "OUTCOME_TTL",
    "ServiceBusCloud",
    "ServiceBusRelay",
    "build_client",
    "probe",
    "translate_servicebus_error",
]
