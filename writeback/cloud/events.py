"""Writeback requests that arrive as CloudEvents through Event Grid, and the events that answer.

A portal or an identity workflow publishes `Writeback.PasswordReset.Requested`,
`Writeback.PasswordChange.Requested`, `Writeback.AccountUnlock.Requested` or
`Writeback.PasswordExpire.Requested` (CloudEvents 1.0)
whose `data` is the body the HTTP API takes (docs/api.md). Event Grid stores and retries events,
so a password in one must be sealed to the domain's relay keys (`sealedPassword`): a cleartext
`newPassword` or `oldPassword` is refused and audited without its value, and nothing here ever
logs or stores `data`. Each event becomes one request through `WritebackService.submit`, under
a request id derived from the event's source and id (`request_id`), so a second delivery finds
the request already recorded and applies nothing again. The outcome goes back as a
`Writeback.*.Completed` CloudEvent. A bad event is refused (audited, answered), never raised;
only what a later delivery can get past is raised, so that Event Grid retries: storage or keys
unreachable, an outcome not in yet (`OutcomePending`), or a request that could not be sent (no
relay alive, Service Bus down) while it is still valid (`NotSentYet`: the next delivery sends it
again under the same id; after its expiry the `agent.unavailable` or `transport.unavailable`
outcome is final and answered). Nothing here imports azure.functions:
`writeback.cloud.http` adapts the trigger and the output binding.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from writeback.cloud.audit import AuditRecord, AuditTrail
from writeback.cloud.service import NOT_SENT, Answer, WritebackService
from writeback.cloud.submissions import InvalidInput, Submission, parse
from writeback.cloud.telemetry import Telemetry, trace_id
from writeback.protocol import Operation, Reason
from writeback.protocol.accounts import AccountRef, BadReference
from writeback.protocol.messages import MAX_TEXT, TRACEPARENT, strict_json

log = logging.getLogger(__name__)

REQUESTED: dict[str, Operation] = {
    "Writeback.PasswordReset.Requested": Operation.RESET,
    "Writeback.PasswordChange.Requested": Operation.CHANGE,
    "Writeback.AccountUnlock.Requested": Operation.UNLOCK,
    "Writeback.PasswordExpire.Requested": Operation.EXPIRE,
}
COMPLETED: dict[Operation, str] = {
    Operation.RESET: "Writeback.PasswordReset.Completed",
    Operation.CHANGE: "Writeback.PasswordChange.Completed",
    Operation.UNLOCK: "Writeback.AccountUnlock.Completed",
    Operation.EXPIRE: "Writeback.PasswordExpire.Completed",
}
COMPLETED_SOURCE = "/writeback"
# A request id is the UUIDv5 of "<source>\n<id>" in this namespace (published in
# docs/events.md): a publisher sealing a password computes the id the seal must be bound to.
EVENT_NAMESPACE = uuid.UUID("751b68e0-601e-42ad-a2ea-a58792352e3d")
CALLER_KIND = "event"
SOURCE = "event"  # the audit record's `source`
CLEARTEXT = ("newPassword", "oldPassword")
CLEARTEXT_PROBLEM = "cleartext password in an event (events are stored: send sealedPassword)"
DUPLICATE = "request.duplicate"
# Event Grid's first retries come within about two minutes of the first delivery (10 s, 30 s,
# 1 min, ...); later ones may be the subscription's last, so a request that could not be sent by
# then is answered as failed rather than left to a retry that may never come.
NOT_SENT_RETRY_SECONDS = 120.0
_ATTRIBUTE = re.compile(r"[^\x00-\x1f\x7f]{1,1024}")  # an id or a source: printable, bounded


def request_id(source: str, event_id: str) -> str:
    """The request id of the event `event_id` from `source` (the same on every delivery)."""
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{source}\n{event_id}"))


@dataclass(frozen=True)
class RequestedEvent:
    """An incoming event as the trigger read it. `data` may hold a sealed password (or, to be
    refused, a cleartext one), so it is kept out of `repr` and never logged."""

    id: str
    source: str
    type: str
    data: Any = field(repr=False)
    specversion: str | None = "1.0"  # None: delivered in the Event Grid schema
    traceparent: str | None = None

    @classmethod
    def from_json(cls, text: str | bytes) -> RequestedEvent | None:
        """The event in one delivered event's JSON, in either schema: CloudEvents 1.0 (has
        `specversion`) or Event Grid's (`topic` stands for the source, `eventType` for the
        type). None when it is not a JSON object; fields of the wrong type are kept as they are
        for `EventHandler.handle` to refuse."""
        try:
            event = strict_json(text)
        except (ValueError, RecursionError):
            return None
        if not isinstance(event, dict):
            return None
        if "specversion" in event:
            return cls(
                id=_member(event, "id"), source=_member(event, "source"),
                type=_member(event, "type"), data=_member(event, "data"),
                specversion=_member(event, "specversion"),
                traceparent=_member(event, "traceparent"),
            )  # fmt: skip
        return cls(
            id=_member(event, "id"), source=_member(event, "topic"),
            type=_member(event, "eventType"), data=_member(event, "data"), specversion=None,
        )  # fmt: skip


@dataclass(frozen=True)
class EventCaller:
    """Who asked, for the audit trail: the publisher, named by the event's source."""

    kind: str
    identity: str


@dataclass(frozen=True)
class CompletedEvent:
    """The `Writeback.*.Completed` CloudEvent that answers a requested one. Its id is the
    request id, so a consumer drops a repeat (an event delivered twice is answered twice)."""

    type: str
    id: str
    time: str
    data: dict[str, Any]
    subject: str | None = None
    traceparent: str | None = None

    def to_json(self) -> str:
        event: dict[str, Any] = {
            "specversion": "1.0",
            "type": self.type,
            "source": COMPLETED_SOURCE,
            "id": self.id,
            "time": self.time,
            "datacontenttype": "application/json",
            "data": self.data,
        }
        if self.subject:
            event["subject"] = self.subject
        if self.traceparent:
            event["traceparent"] = self.traceparent  # the CloudEvents distributed tracing extension
        return json.dumps(event, separators=(",", ":"))


class OutcomePending(Exception):
    """The request went to a relay but its outcome is not in yet. Raised so that Event Grid
    delivers the event again later; that delivery looks for the outcome and sends nothing."""


class NotSentYet(Exception):
    """No relay of the domain was alive, or Service Bus could not be reached, and the request is
    still valid: raised so that Event Grid delivers the event again, which sends the request
    again under the same id. Once the request has expired, the outcome is final and answered."""


class EventHandler:
    """Applies requested events through the writeback service and answers them."""

    def __init__(
        self,
        service: WritebackService,
        audit: AuditTrail,
        telemetry: Telemetry,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.service = service
        self.audit = audit
        self.telemetry = telemetry
        self.clock = clock

    async def handle(self, event: RequestedEvent) -> CompletedEvent | None:
        """Apply one requested event and return its Completed event; None for an event that is
        not a writeback request at all (no id or source, another type): logged and dropped."""
        operation = REQUESTED.get(event.type) if isinstance(event.type, str) else None
        if not _envelope_ok(event) or operation is None:
            log.warning(
                "event dropped: not a writeback request",
                extra={"event_type": str(event.type)[:128], "specversion": str(event.specversion)},
            )
            return None
        rid = request_id(event.source, event.id)
        caller = EventCaller(CALLER_KIND, f"event-grid:{event.source}"[:MAX_TEXT])
        context = {"request_id": rid, "event_id": event.id[:128], "event_type": event.type}
        traceparent = event.traceparent if _traceparent_ok(event.traceparent) else None

        existing = await self.audit.get(rid)
        if existing is not None and not (
            existing.reason in NOT_SENT
            and self._may_retry(existing.received_at, existing.expires_at)
        ):
            log.info("event already handled", extra=context)
            return await self._answer_again(existing, caller, event, operation)
        first_arrival = existing.received_at if existing is not None else self.clock()
        try:
            submission = _submission(operation, event.data, rid)
        except InvalidInput as exc:
            return await self._refuse(exc, event, operation, caller)

        with self.telemetry.request(operation.value, traceparent) as sent_traceparent:
            try:
                answer = await self.service.submit(
                    submission, caller, source=SOURCE, trace_id=trace_id(sent_traceparent),
                    traceparent=sent_traceparent,
                )  # fmt: skip
            except InvalidInput as exc:
                if exc.reason != DUPLICATE:
                    return await self._refuse(exc, event, operation, caller)
                # The same event, delivered twice at once: the other delivery owns the request.
                existing = await self.audit.get(rid)
                if existing is None:
                    raise OutcomePending(rid) from None
                return await self._answer_again(existing, caller, event, operation)
            self.telemetry.completed(operation.value, answer)
        if answer.state == "pending":
            log.info("event outcome pending: Event Grid will deliver it again", extra=context)
            raise OutcomePending(rid)
        expires = submission.expires_at or first_arrival + self.service.settings.lifetime_seconds
        if answer.reason in NOT_SENT and self._may_retry(first_arrival, expires):
            log.warning(
                "event not sent: Event Grid will deliver it again",
                extra={**context, "reason": answer.reason},
            )
            raise NotSentYet(rid)
        log.info(
            "event completed", extra={**context, "status": answer.status, "reason": answer.reason}
        )
        return self._completed(operation, submission.user, answer, event, traceparent)

    def _may_retry(self, first_arrival: float, expires_at: float | None) -> bool:
        """Whether a request not sent yet is left to Event Grid's next delivery: while it is
        valid, and only within the first retries, so that the event's last delivery (the
        subscription tries 5 times in 10 minutes) is answered, never dead-lettered unanswered."""
        until = first_arrival + NOT_SENT_RETRY_SECONDS
        if expires_at is not None:
            until = min(until, expires_at)
        return self.clock() < until

    async def _refuse(
        self, exc: InvalidInput, event: RequestedEvent, operation: Operation, caller: EventCaller
    ) -> CompletedEvent:
        """Audit a refused event (its problem names a field, never a value) and answer it."""
        data = event.data if isinstance(event.data, dict) else {}
        user = data.get("user")
        user = _canonical(user)
        now = self.clock()
        detail = f"{exc.field}: {exc.problem}" if exc.field else exc.problem
        record = AuditRecord(
            request_id=request_id(event.source, event.id),
            received_at=now,
            domain=await self._domain(user),
            user=user,
            operation=operation.value,
            initiator=None,
            caller=caller.identity,
            caller_kind=caller.kind,
            source=SOURCE,
            sealed_by_caller="sealedPassword" in data,
            status=Reason.REQUEST_INVALID.status.value,
            reason=exc.reason,
            message=Reason.REQUEST_INVALID.message,
            detail=detail[:MAX_TEXT],
            completed_at=now,
            duration_ms=0,
        )
        await self.audit.record(record)
        log.warning(
            "event refused",
            extra={"request_id": record.request_id, "event_type": event.type,
                   "reason": exc.reason, "field": exc.field},
        )  # fmt: skip
        completed = self._completed(operation, user, Answer.of(record), event, None)
        completed.data["field"] = exc.field
        completed.data["problem"] = exc.problem
        return completed

    async def _answer_again(
        self, existing: AuditRecord, caller: EventCaller, event: RequestedEvent,
        operation: Operation,
    ) -> CompletedEvent:  # fmt: skip
        """The Completed event of a request this event already made (nothing is sent again)."""
        if (existing.caller_kind, existing.caller) != (caller.kind, caller.identity):
            # Another caller chose this id first: never answer this event with its outcome.
            log.error(
                "event refused: its request id is another caller's",
                extra={"request_id": existing.request_id},
            )
            invalid = Reason.REQUEST_INVALID
            refused = Answer(
                existing.request_id, "completed", invalid.status.value, invalid.value,
                invalid.message, None,
            )  # fmt: skip
            return self._completed(operation, "", refused, event, None)
        answer = Answer.of(existing)
        if answer.state == "pending":
            # Looks for the late outcome on the request's session (or ends it when too late).
            answer = await self.service.status(existing.request_id) or answer
            if answer.state == "pending":
                raise OutcomePending(existing.request_id)
        return self._completed(operation, existing.user, answer, event, None)

    async def _domain(self, user: str) -> str:
        if not user:
            return ""
        try:
            return await self.service.route(user)
        except InvalidInput:
            return ""

    def _completed(
        self, operation: Operation, user: str, answer: Answer, event: RequestedEvent,
        traceparent: str | None,
    ) -> CompletedEvent:  # fmt: skip
        return CompletedEvent(
            type=COMPLETED[operation],
            id=answer.request_id,
            time=datetime.fromtimestamp(self.clock(), UTC).isoformat().replace("+00:00", "Z"),
            subject=user or None,
            traceparent=traceparent,
            data={
                "requestId": answer.request_id,
                "eventId": event.id,
                "eventSource": event.source,
                "user": user or None,
                "operation": operation.value,
                "status": answer.status,
                "reason": answer.reason,
                "message": answer.message,
                "durationMs": answer.duration_ms,
            },
        )


def _canonical(user: object) -> str:
    """The canonical spelling of an event's `user`, or "" when it names no account."""
    try:
        return str(AccountRef.parse(user)) if isinstance(user, str) else ""
    except BadReference:
        return ""


def _member(event: dict[str, Any], name: str) -> Any:
    """A member of a delivered event as it is (any JSON type; None when absent)."""
    return event.get(name)


def _envelope_ok(event: RequestedEvent) -> bool:
    return (
        event.specversion in ("1.0", None)
        and isinstance(event.id, str)
        and isinstance(event.source, str)
        and bool(_ATTRIBUTE.fullmatch(event.id))
        and bool(_ATTRIBUTE.fullmatch(event.source))
    )


def _traceparent_ok(value: object) -> bool:
    return isinstance(value, str) and TRACEPARENT.fullmatch(value) is not None


def _submission(operation: Operation, data: Any, rid: str) -> Submission:
    """The submission in an event's data, under the event's request id (InvalidInput if not)."""
    if not isinstance(data, dict):
        raise InvalidInput("data", "must be a JSON object (the body the HTTP API takes)")
    cleartext = [name for name in CLEARTEXT if name in data]
    if cleartext:
        # Checked before anything else reads `data`: the value must go nowhere, and the
        # refusal names the field only.
        raise InvalidInput(cleartext[0], CLEARTEXT_PROBLEM)
    submission = parse(operation, data)
    if submission.request_id is not None and submission.request_id != rid:
        raise InvalidInput(
            "requestId", "must be the id derived from the event's source and id (docs/events.md)"
        )
    return dataclasses.replace(submission, request_id=rid)
