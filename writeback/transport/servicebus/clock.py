"""How this host's clock compares with Service Bus's, read with nothing but a relay's rights.

Service Bus stamps each message with its own clock (`enqueued_time_utc`), and a relay may peek
its request queue (Listen), which locks, settles and counts nothing. The newest enqueued time
seen is a moment the service's clock has already passed, so it bounds the skew from one side
only: this host is *at least* `behind` seconds behind the service, and *at most* `ahead`
seconds ahead of it (tight only if that message is recent). An empty queue tells nothing. A
relay's own locks no longer depend on the two clocks agreeing (the lock keeper times them
itself), but the SDK's lock checks and anything else comparing the service's times with local
ones do; `writeback-relay doctor` reports the reading against the lock duration.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from azure.core.credentials_async import AsyncTokenCredential

from writeback.transport import requests_queue
from writeback.transport.servicebus.bus import build_client, translate_servicebus_error
from writeback.transport.settings import ServiceBusSettings

PEEK_MESSAGES = 32  # how many queued requests are peeked for their enqueued times


@dataclass(frozen=True)
class ServiceClock:
    """The bounds a peek gave (None when the queue was empty); seconds, positive as named."""

    behind: float | None  # this host is at least this far behind the service
    ahead: float | None  # and at most this far ahead of it
    seen: int  # how many messages were peeked


async def read_service_clock(
    settings: ServiceBusSettings, credential: AsyncTokenCredential | None, domain: str
) -> ServiceClock:
    """Peek the domain's request queue and bound this host's clock against the service's."""
    client = build_client(settings, credential)
    try:
        async with client, client.get_queue_receiver(requests_queue(domain)) as receiver:
            peeked = await receiver.peek_messages(max_message_count=PEEK_MESSAGES)
            now = time.time()
    except Exception as exc:
        raise translate_servicebus_error(exc, f"peek {requests_queue(domain)}") from exc
    stamps = [m.enqueued_time_utc.timestamp() for m in peeked if m.enqueued_time_utc]
    if not stamps:
        return ServiceClock(None, None, len(peeked))
    newest = max(stamps)
    return ServiceClock(behind=newest - now, ahead=now - newest, seen=len(peeked))
