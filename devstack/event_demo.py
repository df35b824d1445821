"""The event-driven path of the main job: a portal's CloudEvent through the Event Grid webhook.

A portal publishes `Writeback.PasswordReset.Requested` with the password sealed to the domain's
relay keys (fetched from the API), bound to the request id derived from the event's source and
id. It is delivered to the local host's Event Grid webhook twice, as Event Grid's at-least-once
delivery may: each delivery answers 200 and publishes the same `Writeback.PasswordReset.Completed`
event, and the second writes nothing to AD. Returns one row per delivery for the demo's table.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from writeback import sealing
from writeback.cloud import events
from writeback.protocol import Operation
from writeback.protocol.messages import RequestMessage, Secrets

SOURCE = "/portals/demo"
Row = tuple[str, int, str, int, bool, str]


def sealed_event(
    jwks: dict[str, Any], domain: str, user: str, password: str, *, source: str = SOURCE
) -> dict[str, Any]:
    """A requested CloudEvent (JSON) with `password` sealed as a portal seals it."""
    event_id = str(uuid.uuid4())
    request_id = events.request_id(source, event_id)
    expires = int(time.time()) + 120
    binding = RequestMessage(
        id=request_id, domain=domain, operation=Operation.RESET, user=user, issued_at=0,
        expires_at=expires,
    ).binding()  # fmt: skip
    sealed = sealing.seal(
        Secrets(new_password=password), binding, sealing.public_keyset(jwks, "jwks")
    )
    return {
        "specversion": "1.0", "id": event_id, "source": source,
        "type": "Writeback.PasswordReset.Requested", "subject": f"users/{user}",
        "datacontenttype": "application/json",
        "data": {"user": user, "initiator": "self-service", "sealedPassword": sealed,
                 "requestId": request_id, "expiresAt": expires},
    }  # fmt: skip


def deliver(host: str, event: dict[str, Any]) -> int:
    """POST one CloudEvent to the host's Event Grid webhook, as Event Grid does; the status."""
    request = urllib.request.Request(  # noqa: S310 - http to the local host
        f"{host}/runtime/webhooks/eventgrid?functionName=writeback_event",
        data=json.dumps(event).encode(), method="POST",
        headers={"Content-Type": "application/cloudevents+json; charset=utf-8",
                 "aeg-event-type": "Notification"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - see above
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def completed(published: Path, request_id: str) -> list[dict[str, Any]]:
    """The Completed events the host published for `request_id`, oldest first."""
    if not published.exists():
        return []
    found = [json.loads(line) for line in published.read_text().splitlines() if line.strip()]
    return [event for event in found if event.get("id") == request_id]


def run(env: Mapping[str, str], user: str, password: str, stamp: Callable[[], str]) -> list[Row]:
    """Deliver one sealed reset event twice to the stack `env` describes (.devstack/env); a row
    per delivery. `stamp` reads the user's pwdLastSet: the second delivery is as expected only
    if it did not move."""
    api, key, domain = env["WRITEBACK_API_URL"], env["WRITEBACK_API_KEY"], env["WRITEBACK_DOMAIN"]
    published = Path(env["WRITEBACK_EVENTS_PUBLISHED"])
    request = urllib.request.Request(  # noqa: S310 - http to the local host
        f"{api}/v1/domains/{domain}/keys", headers={"x-functions-key": key}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - see above
        jwks = json.loads(response.read())
    event = sealed_event(jwks, domain, user, password)
    request_id = event["data"]["requestId"]
    host = api.removesuffix("/api")
    rows: list[Row] = []
    stamps: list[str] = []
    for n, what in enumerate(("event: sealed reset (Event Grid)", "event: same event again"), 1):
        started = time.perf_counter()
        status = deliver(host, event)
        elapsed = int(1000 * (time.perf_counter() - started))
        stamps.append(stamp())
        answers = completed(published, request_id)
        data = answers[-1]["data"] if len(answers) == n else {}
        reason = str(data.get("reason") or "no Completed event")
        message = str(data.get("message", ""))
        ok = (status, reason) == (202, "applied")  # the host accepts a delivery with 202
        if n == 2:
            ok = ok and stamps[0] == stamps[1]
            message = "the same Completed event; AD " + (
                "not written again" if stamps[0] == stamps[1] else "WRITTEN AGAIN"
            )
        rows.append((what, status, reason, elapsed, ok, message))
    return rows
