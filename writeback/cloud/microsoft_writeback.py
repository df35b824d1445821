"""Side by side with Microsoft's writeback: the Entra records it wrote back to AD itself.

Microsoft's writeback (Entra Connect or Cloud Sync) may also serve a writeback domain, during a
migration or for good (WRITEBACK_MICROSOFT_WRITEBACK_DOMAINS). It writes back what goes through
Microsoft's SSPR library: self-service resets and changes, and admin resets in the Entra admin
center. Entra logs each of those twice under one correlation id, once by "Self-service Password
Management" (logged as a success only once AD took the password: the library writes back before
it answers) and once by "Core Directory". A Microsoft 365 admin center reset does not use the
library: it has the Core Directory record alone and never reaches AD. So, for such a domain:

- an SSPR password record becomes an entry in the audit trail saying that Microsoft's writeback
  wrote the password (status and reason `applied`), so the user's history shows it;
- its Core Directory twin finds that entry by the correlation id (`entry_id`) and is no drift,
  whether the twin comes later in the same batch (`sspr_first`) or in a later batch (the user's
  window lookup reads the entry);
- a Core Directory record with no such entry is drift, as for any domain.

Deciding and describing only: `drift` reads the audit trail and writes. An entry holds what
Entra logged (activity, initiator, time, ids), never a password, which Entra's record has not.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime

from writeback.cloud.audit import AuditRecord
from writeback.cloud.entra_audit import SOURCE, SSPR_LIBRARY, EntraActivity
from writeback.protocol import Operation, Reason
from writeback.protocol.accounts import upn_key
from writeback.protocol.messages import MAX_TEXT

PREFIX = "microsoft"  # an entry's request id is microsoft:<uuid>
CALLER = f"{SOURCE}:microsoft-writeback"
MESSAGE = "Microsoft's writeback (Entra Connect or Cloud Sync) set the password in AD."
_NAMESPACE = uuid.UUID("0c8f2d4e-7a61-4b39-9e15-3d2a6f8c1b70")


def sspr_first(activities: Iterable[EntraActivity]) -> list[EntraActivity]:
    """The batch with the SSPR library's records first, each side in its order: an SSPR record
    is then recorded before its Core Directory twin looks for it, whatever the batch's order."""
    return sorted(activities, key=lambda activity: activity.logged_by != SSPR_LIBRARY)


def entry_id(activity: EntraActivity) -> str:
    """The entry's request id, the same for an SSPR record and its Core Directory twin: from
    Entra's correlation id and the user (Entra's record id when it has no correlation id)."""
    operation = activity.correlation_id or f"record:{activity.record_id}"
    name = operation + "\n" + upn_key(activity.user)
    return f"{PREFIX}:{uuid.uuid5(_NAMESPACE, name)}"


def wrote_back(record: AuditRecord, activity: EntraActivity) -> bool:
    """Whether `record` is the entry of Microsoft's writeback for the operation `activity`
    belongs to (without a correlation id to tell, any of its entries in the window is)."""
    if record.source != SOURCE or not record.request_id.startswith(f"{PREFIX}:"):
        return False
    return activity.correlation_id is None or record.request_id == entry_id(activity)


def entry(activity: EntraActivity, domain: str, now: float) -> AuditRecord:
    """The audit entry for an SSPR password record: Microsoft's writeback wrote it, applied."""
    when = datetime.fromtimestamp(activity.at, UTC).isoformat()
    change = activity.activity.startswith("Change")
    detail = (
        f"Entra '{activity.activity}' ({activity.logged_by}) by {activity.initiated_by} at "
        f"{when}, record {activity.record_id}, correlation {activity.correlation_id}: written "
        f"back by Microsoft's writeback, which serves {domain} "
        "(WRITEBACK_MICROSOFT_WRITEBACK_DOMAINS); writeback sent nothing."
    )
    return AuditRecord(
        request_id=entry_id(activity),
        received_at=activity.at,  # when it happened in Entra: its twin's window is around it
        domain=domain,
        user=activity.user,
        operation=(Operation.CHANGE if change else Operation.RESET).value,
        initiator=activity.initiated_by,
        caller=CALLER,
        caller_kind="event",
        source=SOURCE,
        status="applied",
        reason=Reason.APPLIED.value,
        message=MESSAGE,
        detail=detail[:MAX_TEXT],
        completed_at=now,
        duration_ms=max(0, round((now - activity.at) * 1000)),
    )
