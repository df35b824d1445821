"""Reading the Entra ID audit log stream: Azure Monitor's export format, records to `EntraActivity`.

Entra's diagnostic settings stream the audit log to an Event Hub in Azure Monitor's export
format, `{"records": [{"category": "AuditLogs", "operationName": …, "properties": {…}}]}`
(docs/events.md). Only the self-service unlock and the successful password resets and changes
matter; every other record is dropped on its category and operation name before any other work.

Parsing only: nothing here routes, writes or decides what an activity means (`drift` does). A
record that cannot be read is logged and skipped, never failing the batch; a log line names the
field, never a value (no UPN).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from writeback.protocol.accounts import upn_problem

log = logging.getLogger(__name__)

SOURCE = "entra-audit"  # the audit record's `source` for what the stream writes
AUDIT_LOGS = "AuditLogs"  # the diagnostic category of the audit log (sign-ins are others)
# loggedByService of what Microsoft's SSPR library (and so Microsoft's writeback) handled
SSPR_LIBRARY = "Self-service Password Management"
UNLOCK = "Unlock user account (self-service)"
# Entra's names (loggedByService "Self-service Password Management" for the first three, "Core
# Directory" for the rest; Microsoft's audit activity reference lists "Reset password" where
# tenants log "Reset user password", so both are read).
PASSWORD_ACTIVITIES = frozenset(
    {
        "Reset password (self-service)",
        "Reset password (by admin)",
        "Change password (self-service)",
        "Reset user password",
        "Change user password",
        "Reset password",
    }
)
RELEVANT = PASSWORD_ACTIVITIES | {UNLOCK}


class Unreadable(ValueError):
    """A relevant record that cannot be used; the message names the field, never a value."""


@dataclass(frozen=True)
class EntraActivity:
    """One successful, relevant Entra audit record: what happened, to whom, when, by whom."""

    record_id: str  # Entra's `properties.id`
    activity: str  # activityDisplayName
    logged_by: str  # loggedByService
    user: str  # the target user's UPN
    at: float  # activityDateTime, epoch seconds
    initiated_by: str  # "user:<upn>" or "app:<name>"
    correlation_id: str | None


@dataclass
class Summary:
    """What one batch held and what became of it (logged once per batch)."""

    records: int = 0
    relevant: int = 0
    skipped: int = 0  # unreadable
    not_ours: int = 0  # no writeback domain, or unlocks are off
    unlocks: int = 0
    drifts: int = 0
    matched: int = 0
    microsoft: int = 0  # written back by Microsoft's writeback (a domain it also serves)
    repeated: int = 0  # already handled (a batch again, or another service's twin record)
    failed: int = 0


def activities(body: bytes | str, summary: Summary) -> Iterator[EntraActivity]:
    """The relevant activities in one Event Hub message; the rest is counted and dropped."""
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        summary.skipped += 1
        log.warning("audit message skipped: not JSON")
        return
    records = message.get("records") if isinstance(message, dict) else None
    if not isinstance(records, list):
        summary.skipped += 1
        log.warning("audit message skipped: no records list (not a diagnostic export)")
        return
    for record in records:
        summary.records += 1
        if not isinstance(record, dict):
            summary.skipped += 1
            log.warning("audit record skipped: not an object")
            continue
        name = record.get("operationName")
        # The cheap filter: most of the stream is sign-ins and other directory changes.
        if (
            record.get("category") != AUDIT_LOGS
            or not isinstance(name, str)
            or name not in RELEVANT
        ):
            continue
        try:
            activity = read_record(record)
        except Unreadable as exc:
            summary.skipped += 1
            log.warning("audit record skipped", extra={"activity": name, "problem": str(exc)})
            continue
        if activity is not None:
            summary.relevant += 1
            yield activity


def read_record(record: Mapping[str, Any]) -> EntraActivity | None:
    """The activity of one relevant AuditLogs record; None if it did not succeed."""
    properties = record.get("properties")
    if not isinstance(properties, dict):
        raise Unreadable("properties is not an object")
    result = properties.get("result")
    if result is None:
        raise Unreadable("properties.result is missing")
    if result not in ("success", 0):  # 0 is "success" in older exports
        return None  # a failed reset changed no password
    record_id = properties.get("id")
    if not isinstance(record_id, str) or not record_id:
        raise Unreadable("properties.id is missing")
    logged_by = properties.get("loggedByService")
    correlation = properties.get("correlationId") or record.get("correlationId")
    return EntraActivity(
        record_id=record_id,
        activity=str(record["operationName"]),
        logged_by=logged_by if isinstance(logged_by, str) else "",
        user=_target_user(properties.get("targetResources")),
        at=_time(properties.get("activityDateTime") or record.get("time")),
        initiated_by=_initiator(properties.get("initiatedBy")),
        correlation_id=correlation if isinstance(correlation, str) else None,
    )


def _target_user(targets: object) -> str:
    if not isinstance(targets, list):
        raise Unreadable("properties.targetResources is not a list")
    for target in targets:
        if not isinstance(target, dict):
            continue
        kind = target.get("type", target.get("Type", "User"))  # Graph's samples spell it "Type"
        upn = target.get("userPrincipalName")
        if isinstance(kind, str) and kind.lower() == "user" and isinstance(upn, str) and upn:
            if upn_problem(upn) is not None:
                raise Unreadable("targetResources: the user's userPrincipalName is not a UPN")
            return upn
    raise Unreadable("targetResources names no user")


def _time(value: object) -> float:
    if not isinstance(value, str):
        raise Unreadable("properties.activityDateTime is missing")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise Unreadable("properties.activityDateTime is not an ISO 8601 time") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _initiator(initiated: object) -> str:
    if isinstance(initiated, dict):
        user, app = initiated.get("user"), initiated.get("app")
        if isinstance(user, dict) and isinstance(user.get("userPrincipalName"), str):
            return f"user:{user['userPrincipalName']}"[:256]
        if isinstance(app, dict):
            name = app.get("displayName") or app.get("appId")
            if isinstance(name, str):
                return f"app:{name}"[:256]
    return "unknown"
