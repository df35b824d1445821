"""The Entra ID audit log stream: unlocks to write back, and passwords that drifted apart.

`entra_audit` reads each Event Hub message into `EntraActivity` records; two kinds matter here:

- "Unlock user account (self-service)" for a user of a writeback domain becomes an unlock
  request through the writeback service, when WRITEBACK_UNLOCK_ON_ENTRA_SELF_SERVICE is on;
- a successful password reset or change in Entra for a user of a writeback domain with no
  writeback request for that user (applied, or still pending) within
  WRITEBACK_DRIFT_WINDOW_SECONDS of it means the Entra and AD passwords now differ: a reset in
  the Microsoft 365 admin center, which never writes back, is the known case. It becomes a drift
  record in the audit trail, one count of `writeback.drift` and a warning log line
  ("password drift") for an operator to alert on. With WRITEBACK_DRIFT_FORCE_CHANGE on, an
  expire request (pwdLastSet = 0) goes to the user's relay first, so the user must choose a new
  password at the next on-premises logon and the two cannot silently stay apart; the drift
  record says what became of it.

For a domain Microsoft's own writeback also serves (WRITEBACK_MICROSOFT_WRITEBACK_DOMAINS), what
Microsoft's SSPR library logged was written back by Microsoft: no unlock is sent, and its
password records become entries saying so, which their Core Directory twins then match
(`microsoft_writeback`). A reset only Core Directory logged is drift there too.

One bad record never fails the batch. Ids derive from Entra's ids (the record's, or for
Microsoft's entries the correlation id), so a batch delivered again changes nothing. Logs carry
request ids, domains and Entra record ids, never a UPN (the audit record has it).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from opentelemetry import metrics

from writeback.cloud import microsoft_writeback, signals
from writeback.cloud.audit import AuditRecord, AuditTrail
from writeback.cloud.entra_audit import (
    SOURCE,
    SSPR_LIBRARY,
    UNLOCK,
    EntraActivity,
    Summary,
    activities,
)
from writeback.cloud.service import Answer, WritebackService
from writeback.cloud.settings import DRIFT_FORCE_CHANGE, EventSettings
from writeback.cloud.submissions import InvalidInput, Submission
from writeback.cloud.telemetry import Telemetry, trace_id
from writeback.errors import WritebackError
from writeback.protocol import Operation, Reason
from writeback.protocol.messages import MAX_TEXT
from writeback.routing import UnknownDomain

log = logging.getLogger(__name__)

DRIFT = "drift"  # a drift record's `operation`
DRIFT_REASON = Reason.PASSWORD_DRIFT.value
DRIFT_MESSAGE = "The password was changed in Entra ID but not in Active Directory."
_NAMESPACE = uuid.UUID("54144abf-95f1-46eb-85e9-0044febfd948")
_WRITES = frozenset({Operation.RESET.value, Operation.CHANGE.value})
_MATCHING = frozenset({"applied", "pending"})
DUPLICATE = "request.duplicate"  # a request that did (or may still) write AD


@dataclass(frozen=True)
class StreamCaller:
    """Who asked, for the audit trail: the audit stream, on behalf of Entra's initiator."""

    kind: str
    identity: str


def derived_id(prefix: str, activity: EntraActivity) -> str:
    """A request id from Entra's record id: the same record always gives the same id."""
    return f"{prefix}:{uuid.uuid5(_NAMESPACE, activity.record_id)}"


class AuditStream:
    """Processes batches of the Entra audit stream over the writeback service and its audit
    trail. Built once per Cloud (settings read once; the drift counter created once)."""

    def __init__(
        self,
        service: WritebackService,
        audit: AuditTrail,
        telemetry: Telemetry,
        settings: EventSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._service = service
        self._audit = audit
        self._telemetry = telemetry
        self._settings = settings
        self._clock = clock
        self._drift = metrics.get_meter("writeback").create_counter(
            signals.DRIFT.name,
            unit="{event}",
            description="Entra ID password resets and changes not written back to AD",
        )

    async def process(self, bodies: Iterable[bytes | str]) -> Summary:
        """Handle every relevant record of the batch. A failure a retry may get past (storage,
        keys, transport) is raised after the whole batch, so a retry policy can run it again
        (the work is idempotent); anything else is logged per record."""
        summary = Summary()
        transient: WritebackError | None = None
        batch = [activity for body in bodies for activity in activities(body, summary)]
        # SSPR records first: Microsoft's writeback's entry exists before its twin looks for it.
        for activity in microsoft_writeback.sspr_first(batch):
            try:
                await self._handle(activity, summary)
            except WritebackError as exc:
                summary.failed += 1
                transient = transient or exc
                log.error(
                    "audit record not processed",
                    extra={"entra_id": activity.record_id, "kind": type(exc).__name__,
                           "error": str(exc)},
                )  # fmt: skip
            except Exception:  # one record's bug must not lose the rest of the batch
                summary.failed += 1
                log.exception("audit record not processed", extra={"entra_id": activity.record_id})
        log.info("audit batch", extra=asdict(summary))
        if transient is not None:
            raise transient
        return summary

    async def _handle(self, activity: EntraActivity, summary: Summary) -> None:
        try:
            domain = self._service.routes.route(activity.user)
        except UnknownDomain:
            summary.not_ours += 1
            return
        microsoft = domain in self._settings.microsoft_writeback_domains
        if activity.activity == UNLOCK:
            await self._unlock(activity, domain, summary, microsoft=microsoft)
        elif microsoft and activity.logged_by == SSPR_LIBRARY:
            await self._written_by_microsoft(activity, domain, summary)
        else:
            await self._check(activity, domain, summary)

    async def _unlock(
        self, activity: EntraActivity, domain: str, summary: Summary, *, microsoft: bool
    ) -> None:
        if microsoft or not self._settings.unlock_on_self_service:
            summary.not_ours += 1  # off, or Microsoft's writeback unlocked the account itself
            return
        caller = f"{SOURCE}:{activity.initiated_by}"
        answer = await self._submit(Operation.UNLOCK, activity, "entra", caller)
        if isinstance(answer, InvalidInput):
            if answer.reason == DUPLICATE:
                summary.repeated += 1
            else:
                summary.skipped += 1
                log.warning("Entra unlock not written back", extra={"reason": answer.reason})
            return
        summary.unlocks += 1
        log.info(
            "Entra self-service unlock written back",
            extra={"request_id": answer.request_id, "domain": domain,
                   "status": answer.status or "pending", "reason": answer.reason},
        )  # fmt: skip

    async def _nearby(self, activity: EntraActivity) -> list[AuditRecord]:
        """The user's audit entries within the drift window around the activity."""
        window = self._settings.drift_window_seconds
        return await self._audit.for_user(activity.user, activity.at - window, activity.at + window)

    async def _written_by_microsoft(
        self, activity: EntraActivity, domain: str, summary: Summary
    ) -> None:
        """Record that Microsoft's writeback wrote this password, for the user's history and
        for the Core Directory twin to find; once, however often the record comes."""
        entry = microsoft_writeback.entry(activity, domain, self._clock())
        if any(r.request_id == entry.request_id for r in await self._nearby(activity)):
            summary.repeated += 1
            return
        await self._audit.record(entry)
        summary.microsoft += 1
        log.info(
            "written back by Microsoft's writeback",
            extra={"request_id": entry.request_id, "domain": domain,
                   "activity": activity.activity, "entra_id": activity.record_id,
                   "correlation_id": activity.correlation_id},
        )  # fmt: skip

    async def _check(self, activity: EntraActivity, domain: str, summary: Summary) -> None:
        window = self._settings.drift_window_seconds
        nearby = await self._nearby(activity)
        # A writeback request that did (or may) write AD, or Microsoft's writeback's entry for
        # this very operation; the stream's own entries for other operations match nothing.
        if any(
            (r.operation in _WRITES and r.status in _MATCHING and r.source != SOURCE)
            or microsoft_writeback.wrote_back(r, activity)
            for r in nearby
        ):
            summary.matched += 1
            return
        if any(r.operation == DRIFT for r in nearby):
            summary.repeated += 1  # this record again, or its twin from another Entra service
            return
        # The expire goes first: if recording the drift fails, the batch's retry finds no drift
        # record, sends the expire again under the same id (a duplicate, so nothing is written
        # twice) and records the drift then.
        forced = await self._force_change(activity) if self._settings.drift_force_change else ""
        await self._record_drift(activity, domain, window, forced)
        summary.drifts += 1

    async def _submit(
        self, operation: Operation, activity: EntraActivity, prefix: str, caller: str
    ) -> Answer | InvalidInput:
        """Send one request for the activity's user through the writeback service, under an id
        derived from the Entra record; the service's refusal is returned, not raised."""
        submission = Submission(operation, activity.user, request_id=derived_id(prefix, activity))
        with self._telemetry.request(operation.value, None) as traceparent:
            try:
                answer = await self._service.submit(
                    submission, StreamCaller("event", caller), source=SOURCE,
                    trace_id=trace_id(traceparent), traceparent=traceparent,
                )  # fmt: skip
            except InvalidInput as exc:
                return exc
            self._telemetry.completed(operation.value, answer)
        return answer

    async def _force_change(self, activity: EntraActivity) -> str:
        """Send an expire for the drifted user; what became of it, for the drift record."""
        request_id = derived_id(Operation.EXPIRE.value, activity)
        answer = await self._submit(Operation.EXPIRE, activity, Operation.EXPIRE.value,
                                    f"{SOURCE}:drift")  # fmt: skip
        if isinstance(answer, InvalidInput):
            if answer.reason == DUPLICATE:
                return f" {DRIFT_FORCE_CHANGE}: expire request {request_id} was sent before."
            return f" {DRIFT_FORCE_CHANGE}: expire not sent ({answer.reason}: {answer.problem})."
        log.info(
            "drifted user must change the password at next logon",
            extra={"request_id": request_id, "status": answer.status or "pending",
                   "reason": answer.reason},
        )  # fmt: skip
        outcome = answer.reason if answer.state == "completed" else "still pending"
        return (
            f" {DRIFT_FORCE_CHANGE}: expire request {request_id} (must change at next logon): "
            f"{outcome}."
        )

    async def _record_drift(
        self, activity: EntraActivity, domain: str, window: float, forced: str
    ) -> None:
        now = self._clock()
        when = datetime.fromtimestamp(activity.at, UTC).isoformat()
        detail = (
            f"Entra '{activity.activity}' ({activity.logged_by or 'unknown service'}) by "
            f"{activity.initiated_by} at {when}, record {activity.record_id}: no writeback "
            f"request for this user within {window:g}s, so the Entra ID and AD passwords differ. "
            "Reset the password through writeback, or have the user change it."
        ) + forced
        record = AuditRecord(
            request_id=derived_id(DRIFT, activity),
            received_at=activity.at,  # when it happened in Entra: the window is around it
            domain=domain,
            user=activity.user,
            operation=DRIFT,
            initiator=activity.initiated_by,
            caller=f"{SOURCE}:{activity.logged_by or 'unknown'}",
            caller_kind="event",
            source=SOURCE,
            status="failed",  # an administrator must act
            reason=DRIFT_REASON,
            message=DRIFT_MESSAGE,
            detail=detail[:MAX_TEXT],
            completed_at=now,
            duration_ms=max(0, round((now - activity.at) * 1000)),
        )
        await self._audit.record(record)
        self._drift.add(1, {"domain": domain, "activity": activity.activity})
        log.warning(
            signals.PASSWORD_DRIFT.name,
            extra={
                "request_id": record.request_id,
                "domain": domain,
                "activity": activity.activity,
                "logged_by": activity.logged_by,
                "entra_id": activity.record_id,
                "correlation_id": activity.correlation_id,
            },
        )
