"""A Service Bus queue model in plain Python, for development and tests only.

`MemoryBroker` keeps queues the way Azure Service Bus does as far as this project relies on it:
peek-lock with lock tokens and lock expiry, delivery counts and a maximum delivery count,
dead-letter sub-queues (`<queue>/$DeadLetterQueue`) with reason and description, message
time-to-live (per queue and per message, the smaller wins), duplicate detection on MessageId
within a window, and sessions (exclusive session locks, next available session, session state).
It is used twice: behind the local AMQP broker in `devstack.servicebus`, which the unmodified
azure-servicebus SDK talks to, and directly by the in-memory transport in unit tests.

It is a model, not a product: production always uses Azure Service Bus. It must never be used to
carry real requests, it keeps everything in memory (nothing survives a restart) and it enforces
no authorisation. It never looks inside message bodies and never logs them.

Time comes from the injected `clock` (wall-clock seconds), so tests drive it by hand. Time is
applied lazily at the start of every operation and by `tick()`, which also tells a caller when
the next lock or message expires. Every method is thread-safe: one re-entrant lock guards all
state. `changed` is a `threading.Condition` on that lock, notified whenever messages may have
become available (send, abandon, release, lock or session expiry) or state otherwise changed,
so a blocking receiver can wait on it; `add_listener` registers callbacks for the same moments
(called outside the lock), which is how the AMQP front-end wakes its event loop.

It is laid out in layers, each importing only those below it: the data (`entity.py`), the
queues with their lock and clock (`store.py`), sending, receiving and settlement (`queues.py`),
and sessions with the public `MemoryBroker` (`broker.py`).
"""

from writeback.transport.memory.broker import MemoryBroker
from writeback.transport.memory.entity import (
    DEAD_LETTER_SUFFIX,
    MAX_DELIVERY_COUNT_EXCEEDED,
    TTL_EXPIRED,
    MessageLockLost,
    QueueConfig,
    SessionCannotBeLocked,
    SessionLockLost,
    StoredMessage,
    UnknownQueue,
)

__all__ = [
    "DEAD_LETTER_SUFFIX",
    "MAX_DELIVERY_COUNT_EXCEEDED",
    "TTL_EXPIRED",
    "MemoryBroker",
    "MessageLockLost",
    "QueueConfig",
    "SessionCannotBeLocked",
    "SessionLockLost",
    "StoredMessage",
    "UnknownQueue",
]
