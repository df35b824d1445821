"""The sweeper: no outcome is lost when a cloud instance dies with requests in flight.

A relay answers on the reply session its request names: the session of the instance that sent
it. When that instance is gone (scaled in, crashed, redeployed), nobody listens there any more.
Its outcomes would sit in the dead session until their time-to-live and then go to the
dead-letter queue, while the audit trail says `pending` and a status read, which looks on the
request's own session, never finds them, though the directory may have been written.

`sweep` runs every minute from a timer trigger (on one instance at a time: the Functions host
holds a lease per timer). It takes the pending requests whose callers have stopped waiting,
adopts each distinct reply session among them that no live instance holds (the transport
re-sends its outcomes to their requests' own sessions, as an instance does with its own late
ones), then reads the status of every such request, its own instance's too. So the verified
outcome, or `agent.timeout` once none can come any more, is recorded even if nobody asks. It
never decides an outcome itself: everything goes through `WritebackService.status`, which
verifies the relay's signature. A session that is held belongs to a live instance, which
forwards its own late outcomes: it is left alone.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from writeback.cloud.audit import AuditRecord
from writeback.cloud.service import OUTCOME_RETENTION_SECONDS, WritebackService
from writeback.errors import TransportError, WritebackError
from writeback.protocol.messages import MAX_LIFETIME_SECONDS

log = logging.getLogger(__name__)

# How far back the sweep looks: past any request's expiry and the outcomes' retention, with room
# for the sweeps missed while the app was down or redeployed. A request older than this stays
# pending until somebody reads its status (which then records agent.timeout).
HORIZON_SECONDS = MAX_LIFETIME_SECONDS + OUTCOME_RETENTION_SECONDS + 2700.0  # an hour
STATUS_READS_AT_ONCE = 8  # each holds a receiver on its request's session for up to a second


@dataclass(frozen=True)
class SweepSummary:
    """What one sweep did: the pending requests it looked at, the reply sessions it adopted
    (and how many outcomes it re-sent from them), those still held by a live instance, the
    requests that got their outcome now, and the steps that failed (tried again next time)."""

    pending: int = 0
    adopted: tuple[str, ...] = ()
    moved: int = 0
    held: int = 0
    completed: int = 0
    failed: int = 0


async def sweep(service: WritebackService) -> SweepSummary:
    """Adopt the reply sessions of gone instances and record what their requests became."""
    now = service.clock()
    records = await service.audit.pending(
        now - HORIZON_SECONDS, now - service.settings.wait_seconds
    )
    own = service.transport.reply_session
    sessions = sorted({s for r in records if (s := r.reply_session) and s != own})
    adopted, moved, held, unadopted = await _adopt_all(service, sessions)
    completed, unread = await _read_statuses(service, records)
    summary = SweepSummary(len(records), tuple(adopted), moved, held, completed, unadopted + unread)
    log.info(
        "sweep",
        extra={
            "pending": summary.pending,
            "adopted": len(summary.adopted),
            "moved": summary.moved,
            "held": summary.held,
            "completed": summary.completed,
            "failed": summary.failed,
        },
    )
    return summary


async def _adopt_all(
    service: WritebackService, sessions: list[str]
) -> tuple[list[str], int, int, int]:
    """Adopt each session in turn: (those adopted, outcomes re-sent, held, failed)."""
    adopted: list[str] = []
    moved = held = failed = 0
    for session in sessions:
        try:
            got = await service.transport.adopt(session)
        except TransportError as exc:
            log.warning("reply session not adopted", extra={"session": session, "error": str(exc)})
            failed += 1
            continue
        if got is None:
            held += 1  # a live instance serves it, and forwards its own late outcomes
            continue
        log.info("reply session adopted", extra={"session": session, "moved": got})
        adopted.append(session)
        moved += got
    return adopted, moved, held, failed


async def _read_statuses(service: WritebackService, records: list[AuditRecord]) -> tuple[int, int]:
    """(how many of `records` now have an outcome, how many could not be read)."""
    gate = asyncio.Semaphore(STATUS_READS_AT_ONCE)

    async def read(record: AuditRecord) -> bool | None:
        async with gate:
            try:
                answer = await service.status(record.request_id)
            except WritebackError as exc:
                log.warning(
                    "status not read",
                    extra={"request_id": record.request_id, "error": str(exc)},
                )
                return None
        return answer is not None and answer.state == "completed"

    results = await asyncio.gather(*(read(record) for record in records))
    return sum(r is True for r in results), sum(r is None for r in results)
