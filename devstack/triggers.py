"""What the Functions host hands the Python worker for each trigger the app uses: the trigger's
`TypedData` and its trigger metadata, as the host's extensions fill them.

The worker decodes these through azure-functions' converters (`devstack.worker`), so the shapes
here are the contract between the host and the library: which `TypedData` kind carries the
payload, which metadata keys exist and with what kind. Each function says whose behaviour it
follows. Values only the real service knows (lock tokens, partition contexts, offsets beyond a
counter) are left out or made up plainly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from devstack.worker import RpcHttp, TypedData, collection

Payload = tuple[TypedData, dict[str, TypedData]]


def _string(value: str | None) -> TypedData:
    return TypedData("string", value) if value is not None else TypedData(None)


def _json(value: Any) -> TypedData:
    return TypedData("json", json.dumps(value))


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def http(  # noqa: PLR0917 - the six parts of RpcHttp, in its order
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    route_params: Mapping[str, str],
    query: Mapping[str, str],
) -> Payload:
    """An HTTP request: `TypedData.http` with the body as bytes (the Python worker announces the
    RawHttpBodyBytes capability) and no trigger metadata (RpcHttpTriggerMetadataRemoved)."""
    request = RpcHttp(
        method=method.upper(),
        url=url,
        headers=dict(headers),
        body=TypedData("bytes", body),
        params=dict(route_params),
        query=dict(query),
    )
    return TypedData("http", request), {}


def service_bus(
    body: bytes,
    *,
    message_id: str,
    session_id: str | None = None,
    reply_to: str | None = None,
    reply_to_session_id: str | None = None,
    content_type: str | None = None,
    correlation_id: str | None = None,
    subject: str | None = None,
    delivery_count: int = 1,
    sequence_number: int = 0,
    enqueued_time: datetime | None = None,
    application_properties: Mapping[Any, Any] | None = None,
) -> Payload:
    """One Service Bus message (`cardinality` one): the body as bytes, and the metadata the
    Service Bus extension binds (`UserProperties` marks cardinality one for the library)."""
    properties = {str(k): _plain(v) for k, v in (application_properties or {}).items()}
    metadata = {
        "MessageId": _string(message_id),
        "SessionId": _string(session_id),
        "ReplyTo": _string(reply_to),
        "ReplyToSessionId": _string(reply_to_session_id),
        "ContentType": _string(content_type),
        "CorrelationId": _string(correlation_id),
        "Subject": _string(subject),
        # Numbers as JSON: the worker's Datum.from_typed_data has no case for TypedData.int.
        "DeliveryCount": _json(delivery_count),
        "SequenceNumber": _json(sequence_number),
        "EnqueuedTimeUtc": _string((enqueued_time or datetime.now(UTC)).isoformat()),
        "ApplicationProperties": _json(properties),
        "UserProperties": _json(properties),
    }
    return TypedData("bytes", body), metadata


def received(message: Any) -> Payload:
    """`service_bus` for a message azure-servicebus received (the local host's receiver)."""
    return service_bus(
        b"".join(message.body),
        message_id=str(message.message_id),
        session_id=message.session_id,
        reply_to=message.reply_to,
        reply_to_session_id=message.reply_to_session_id,
        content_type=message.content_type,
        correlation_id=message.correlation_id,
        subject=message.subject,
        delivery_count=int(message.delivery_count or 0),
        sequence_number=int(message.sequence_number or 0),
        enqueued_time=message.enqueued_time_utc,
        application_properties=message.application_properties,
    )


def _plain(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def event_grid(event: Mapping[str, Any]) -> Payload:
    """One Event Grid event of a delivery (either schema): the event object as JSON. The host's
    Event Grid extension invokes the function once per event of a batch."""
    return _json(dict(event)), {}


def event_hubs_batch(
    events: Sequence[bytes | str], partition: str = "0", first: int = 0
) -> Payload:
    """A batch of Event Hubs events (`cardinality` many): the bodies as `collection_string` and
    one `SystemPropertiesArray` entry per body, as the Event Hubs extension binds them. A body
    is text as .NET's UTF-8 decoder makes it: a byte it cannot read becomes U+FFFD."""
    bodies = [e.decode("utf-8", "replace") if isinstance(e, bytes) else e for e in events]
    now = _now()
    system = [
        {
            "EnqueuedTimeUtc": now,
            "SequenceNumber": first + i,
            "Offset": str(first + i),
            "PartitionKey": None,
        }
        for i, _ in enumerate(bodies)
    ]
    metadata = {
        "SystemPropertiesArray": _json(system),
        "PropertiesArray": _json([{} for _ in bodies]),
        "PartitionContext": _json({"PartitionId": partition, "ConsumerGroup": "$Default"}),
    }
    return collection("collection_string", list(bodies)), metadata


def timer(past_due: bool, last: datetime | None, next_run: datetime) -> Payload:
    """A timer tick: the `TimerInfo` JSON the timer extension binds (`IsPastDue`, schedule)."""
    status = {
        "Last": (last or datetime.min).isoformat(),
        "Next": next_run.isoformat(),
        "LastUpdated": datetime.now(UTC).isoformat(),
    }
    info = {"Schedule": {"AdjustForDST": True}, "ScheduleStatus": status, "IsPastDue": past_due}
    return _json(info), {}
