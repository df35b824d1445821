"""Entra audit-stream messages for tests: the published-shaped fixtures in tests/fixtures/entra,
retargeted at a user of our own, and a batch delivered through function_app's registered
Event Hubs trigger as Azure delivers it (tests.functions: the worker and the library decode it)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import function_app
from tests import functions

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "entra"


def audit_message(name: str, *, target: str, at: float | None = None) -> bytes:
    """A fixture message with its records about `target`, at `at` (their published time when
    None), and record ids of their own, as a new Entra operation would have."""
    message = json.loads((FIXTURES / name).read_text())
    suffix = uuid.uuid4().hex[:8]
    for record in message["records"]:
        properties = record["properties"]
        if isinstance(properties.get("id"), str):
            properties["id"] += f"_{suffix}"
        if at is not None:
            moment = datetime.fromtimestamp(at, UTC)
            record["time"] = moment.isoformat().replace("+00:00", "Z")
            properties["activityDateTime"] = moment.isoformat()
        for resource in properties.get("targetResources") or []:
            if resource.get("type") == "User" and "userPrincipalName" in resource:
                published, resource["userPrincipalName"] = resource["userPrincipalName"], target
                initiator = (properties.get("initiatedBy") or {}).get("user") or {}
                if initiator.get("userPrincipalName") == published:  # self-service
                    initiator["userPrincipalName"] = target
    return json.dumps(message).encode()


async def stream(*bodies: bytes | str) -> None:
    """One batch through the registered trigger (cardinality many), as the host delivers it."""
    await functions.event_hubs(function_app.entra_audit, *bodies)


def by_service(message: bytes, logged_by: str) -> bytes:
    """The message with only the records `logged_by` logged (one side of a pair of twins)."""
    records = json.loads(message)["records"]
    kept = [r for r in records if r["properties"].get("loggedByService") == logged_by]
    return json.dumps({"records": kept}).encode()


def reversed_records(message: bytes) -> bytes:
    """The message with its records in the opposite order (Entra's order inside a batch varies)."""
    records = json.loads(message)["records"]
    return json.dumps({"records": records[::-1]}).encode()
