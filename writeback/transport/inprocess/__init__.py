"""The transport ports on a `MemoryBroker` in this process: Service Bus semantics, no network.

For unit tests of the cloud service and the relay: the same queues, sessions, peek-lock,
delivery counts, TTL and duplicate detection as the Service Bus transport, because the model
underneath is the one the local AMQP broker serves, and the same request/reply scheme (one
reply session per cloud instance, CorrelationId = request id, orphans re-sent to the request's
own session; see `writeback.transport`). Laid out as the Service Bus transport is: what both
sides share (`base.py`), the cloud side (`cloud.py`) and the relay side (`relay.py`). A wait
wakes when the broker reports a change (and at least every POLL_SECONDS, for what only time
changes: expiries, renewals); it is a test fake, not a product transport.
"""

from writeback.transport.inprocess.base import OUTCOME_TTL, POLL_SECONDS
from writeback.transport.inprocess.cloud import REFUSED, UNCORRELATED, InProcessCloud
from writeback.transport.inprocess.relay import HEARTBEAT_TTL, InProcessRelay

__all__ = [
    "HEARTBEAT_TTL",
    "OUTCOME_TTL",
    "POLL_SECONDS",
    "REFUSED",
    "UNCORRELATED",
    "InProcessCloud",
    "InProcessRelay",
]
