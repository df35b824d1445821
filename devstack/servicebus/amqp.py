"""AMQP details of the local Service Bus broker: addresses, messages, ticks and management replies.

Everything here is a pure function over python-qpid-proton types; the event loop lives in
`broker.py` and `pump.py`. Messages keep the exact bytes the client sent (`StoredMessage.raw`),
so properties the model does not know about (content type, subject, `to`, footers, ...)
round-trip untouched; only the header and the broker's message annotations are rewritten on
each delivery.
Never log message bodies or management request bodies: they carry sealed passwords and tokens.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from proton import UNDESCRIBED, Array, Condition, Data, Described, Message, int32, symbol, timestamp

from writeback.transport.memory import StoredMessage

DOTNET_EPOCH_TICKS = 621355968000000000  # .NET ticks (100 ns since 0001-01-01) at the Unix epoch
SESSION_FILTER = symbol("com.microsoft:session-filter")
LOCKED_UNTIL_UTC = symbol("com.microsoft:locked-until-utc")
OPERATION_TIMEOUT = symbol("com.microsoft:timeout")
DEAD_LETTER_REASON = "DeadLetterReason"
DEAD_LETTER_DESCRIPTION = "DeadLetterErrorDescription"

_DATA_SECTION = 0x75
_BARE_SECTIONS = range(0x70, 0x79)  # header .. footer descriptors


@dataclass(frozen=True)
class Node:
    """What a link address points at: a queue (or sub-queue), its `$management`, or `$cbs`."""

    kind: str  # "queue", "management" or "cbs"
    entity: str  # queue name, "<queue>/$DeadLetterQueue", or "" for $cbs


def parse_address(address: str | None) -> Node:
    """`amqps://host:port/requests/$DeadLetterQueue/$management` -> management of that sub-queue.

    The SDK sends full URIs; other clients send bare paths. The entity is everything after the
    host, so a dead-letter sub-queue (two segments) and queue names with '/' both work.
    """
    path = address or ""
    if "://" in path:
        path = path.split("://", 1)[1]
        path = path.split("/", 1)[1] if "/" in path else ""
    path = path.strip("/")
    segments = path.split("/")
    if segments[-1].lower() == "$cbs":
        return Node("cbs", "")
    if segments[-1].lower() == "$management":
        return Node("management", "/".join(segments[:-1]))
    return Node("queue", path)


def error(name: str, description: str) -> Condition:
    """An AMQP error as Service Bus sends it, with a tracking id in `info`.

    The info map must not be empty: proton leaves an empty one out, and pyamqp reads the third
    field of a `rejected` outcome unconditionally (a missing one hangs the SDK's send).
    """
    return Condition(name, description, {symbol("com.microsoft:tracking-id"): str(uuid.uuid4())})


def to_ticks(seconds: float) -> int:
    """Unix seconds as .NET ticks (how Service Bus sends `com.microsoft:locked-until-utc`)."""
    return DOTNET_EPOCH_TICKS + round(seconds * 10_000_000)


def to_timestamp(seconds: float) -> timestamp:
    """Unix seconds as an AMQP timestamp (milliseconds)."""
    return timestamp(round(seconds * 1000))


def plain(value: object) -> object:
    """A filter or request value without its AMQP wrapping (described value, array, bytes)."""
    if isinstance(value, Described):
        return plain(value.value)
    if isinstance(value, Array):
        return [plain(v) for v in value.elements]
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def session_filter(filters: Mapping[Any, Any] | None) -> tuple[bool, str | None]:
    """(whether the source asks for a session, which one: None means the next available)."""
    if not filters:
        return False, None
    for key, value in filters.items():
        if str(key) == SESSION_FILTER:
            session = plain(value)
            if isinstance(session, bytes):
                session = session.decode()
            return True, None if session is None else str(session)
    return False, None


def _sections(raw: bytes) -> Iterator[Described]:
    for section, _ in _sections_at(raw):
        yield section


def _sections_at(raw: bytes) -> Iterator[tuple[Described, int]]:
    """Each top-level section of an encoded message, with the offset just after it."""
    data = Data()
    offset = 0
    while offset < len(raw):
        data.clear()
        offset += data.decode(raw[offset:])
        data.rewind()
        data.next()
        section = data.get_object()
        if not isinstance(section, Described):
            raise ValueError("not an AMQP message section")
        if isinstance(section.value, memoryview):  # a view into `data`, which is reused
            section = Described(section.descriptor, bytes(section.value))
        yield section, offset


# Service Bus Standard limits (https://learn.microsoft.com/azure/service-bus-messaging/service-bus-quotas):
# a message of at most 256 KB including its headers, of which the headers (system and
# application properties) at most 64 KB. Bigger messages are refused with
# `amqp:link:message-size-exceeded` (the SDK raises MessageSizeExceededError).
MAX_MESSAGE_BYTES = 256 * 1024
MAX_HEADER_BYTES = 64 * 1024
MESSAGE_SIZE_EXCEEDED = "amqp:link:message-size-exceeded"
_BODY_SECTIONS = (0x75, 0x76, 0x77)  # data, amqp-sequence, amqp-value


def size_error(raw: bytes) -> str | None:
    """Why Service Bus would refuse this encoded message as too big, or None."""
    if len(raw) > MAX_MESSAGE_BYTES:
        return f"The message of {len(raw)} bytes exceeds the limit of {MAX_MESSAGE_BYTES} bytes."
    start, header = 0, 0
    for section, end in _sections_at(raw):
        if int(section.descriptor) not in _BODY_SECTIONS:
            header += end - start
        start = end
    if header > MAX_HEADER_BYTES:
        return (
            f"The message headers of {header} bytes exceed the limit of {MAX_HEADER_BYTES} bytes."
        )
    return None


def split_batch(raw: bytes) -> list[bytes]:
    """The encoded messages in one transfer: a Service Bus batch envelope carries each message
    as a data section holding a whole encoded message; anything else is one message.

    Proton does not expose the transfer's message-format (0x80013700 marks a batch), so a batch
    is recognised by its shape: no header, no application properties, only data sections, each
    holding an encoded AMQP message.
    """
    sections = list(_sections(raw))
    descriptors = [int(s.descriptor) for s in sections]
    data = [s.value for s in sections if int(s.descriptor) == _DATA_SECTION]
    if not data or 0x70 in descriptors or 0x74 in descriptors:
        return [raw]
    if not all(isinstance(d, bytes) and _is_message(d) for d in data):
        return [raw]
    return [bytes(d) for d in data]


def _is_message(candidate: bytes) -> bool:
    if len(candidate) < 3 or candidate[0] != 0x00 or candidate[1] != 0x53:
        return False
    if candidate[2] not in _BARE_SECTIONS:
        return False
    try:
        return all(int(s.descriptor) in _BARE_SECTIONS for s in _sections(candidate))
    except Exception:  # anything undecodable is simply not an embedded message
        return False


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def stored_message(raw: bytes, now: float | None = None) -> StoredMessage:
    """The model's view of one encoded message; `raw` keeps the bytes for delivery."""
    message = Message()
    message.decode(raw)
    body = message.body
    if isinstance(body, (bytes, bytearray, memoryview)):
        content = bytes(body)
    elif isinstance(body, str):
        content = body.encode()
    else:
        content = b""
    ttl: float | None = message.ttl or None
    if ttl is None and message.expiry_time:
        ttl = max(0.0, message.expiry_time - (time.time() if now is None else now))
    return StoredMessage(
        body=content,
        message_id=_text(message.id),
        session_id=message.group_id or None,
        reply_to=message.reply_to or None,
        reply_to_session_id=message.reply_to_group_id or None,
        correlation_id=_text(message.correlation_id),
        ttl=ttl,
        application_properties=dict(message.properties or {}),
        raw=bytes(raw),
    )


def delivered_message(stored: StoredMessage, source_queue: str | None = None) -> Message:
    """The message as Service Bus delivers it: header delivery-count, broker annotations
    (`x-opt-enqueued-time`, `x-opt-sequence-number`, `x-opt-locked-until`) and, once
    dead-lettered, the `DeadLetterReason` / `DeadLetterErrorDescription` properties."""
    message = Message()
    if isinstance(stored.raw, (bytes, bytearray)):
        message.decode(bytes(stored.raw))
    else:
        message.body = stored.body
        message.inferred = True  # a data section, as the SDK sends bodies
        message.id = stored.message_id
        message.group_id = stored.session_id
        message.reply_to = stored.reply_to
        message.reply_to_group_id = stored.reply_to_session_id
        message.correlation_id = stored.correlation_id
        if stored.ttl is not None:
            message.ttl = stored.ttl
        message.properties = dict(stored.application_properties)
    message.delivery_count = stored.delivery_count
    message.first_acquirer = stored.delivery_count == 0
    annotations: dict[Any, Any] = dict(message.annotations or {})
    annotations[symbol("x-opt-enqueued-time")] = to_timestamp(stored.enqueued_at)
    annotations[symbol("x-opt-sequence-number")] = stored.sequence_number
    if stored.locked_until is not None:
        annotations[symbol("x-opt-locked-until")] = to_timestamp(stored.locked_until)
    if stored.dead_letter_reason is not None or stored.dead_letter_description is not None:
        properties = dict(message.properties or {})
        if stored.dead_letter_reason is not None:
            properties[DEAD_LETTER_REASON] = stored.dead_letter_reason
        if stored.dead_letter_description is not None:
            properties[DEAD_LETTER_DESCRIPTION] = stored.dead_letter_description
        message.properties = properties
        if source_queue is not None:
            annotations[symbol("x-opt-deadletter-source")] = source_queue
    message.annotations = annotations
    return message


def encode(message: Message) -> bytes:
    """Encode a message with every header field written out.

    Proton leaves default header fields out, so a first delivery would arrive without
    `delivery-count` and the SDK would report None; Service Bus sends 0, and so does this.
    """
    encoded = bytes(message.encode())
    rest = encoded
    for section, end in _sections_at(encoded):
        if int(section.descriptor) == 0x70:
            rest = encoded[end:]
        break
    header = Data()
    header.put_described()
    header.enter()
    header.put_ulong(0x70)
    header.put_list()
    header.enter()
    header.put_bool(message.durable)
    header.put_ubyte(message.priority)
    if message.ttl:
        header.put_uint(round(message.ttl * 1000))
    else:
        header.put_null()
    header.put_bool(message.first_acquirer)
    header.put_uint(message.delivery_count)
    header.exit()
    header.exit()
    return bytes(header.encode()) + rest


def reply(
    request: Message,
    status: int,
    description: str,
    body: object = None,
    condition: str | None = None,
) -> Message:
    """A management (or CBS) response: the status under both spellings the SDK reads
    (`statusCode` for `$management`, `status-code` for `$cbs`), correlated to the request."""
    response = Message()
    response.correlation_id = request.id
    response.address = request.reply_to
    properties: dict[str, object] = {
        "statusCode": int32(status),
        "status-code": int32(status),
        "statusDescription": description,
        "status-description": description,
    }
    if condition is not None:
        properties["errorCondition"] = symbol(condition)
        properties["error-condition"] = symbol(condition)
    response.properties = properties
    response.body = body
    response.inferred = False  # an amqp-value section, as Service Bus answers
    return response


def timestamps(values: list[float]) -> Array:
    """An AMQP array of timestamps (the `expirations` of renew-lock)."""
    return Array(UNDESCRIBED, Data.TIMESTAMP, *map(to_timestamp, values))


def lock_tokens(value: object) -> list[str]:
    """The lock tokens of a management request (an array of UUIDs) as strings."""
    tokens = plain(value)
    if not isinstance(tokens, list):
        tokens = [tokens]
    return [str(t if isinstance(t, uuid.UUID) else uuid.UUID(str(t))) for t in tokens]
