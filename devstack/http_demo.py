"""The main job: writeback through the HTTP API of the running local stack, as a caller sees it.

Runs the directory demo's scenario (`demo.scenario`: fresh users, every common outcome) as HTTP
calls to function_app.py on the local host, through the local Service Bus broker and the relay
process into the Samba DC and back, then stops the relay and shows the API failing fast, and
starts it again. Prints one row per call: what it shows, HTTP status, outcome, time, and the
sentence the user would see. Returns False if any row is not the expected one.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from devstack import demo, event_demo, localstack, seed
from devstack.stack import Stack
from writeback.protocol import (
    ChangePassword,
    Command,
    ExpirePassword,
    Reason,
    ResetPassword,
    UnlockAccount,
)

PATHS = {
    "reset": "v1/passwords/reset",
    "change": "v1/passwords/change",
    "unlock": "v1/accounts/unlock",
    "expire": "v1/passwords/expire",
}
STATUS = {"applied": 200, "rejected": 422}


def body(command: Command) -> dict[str, Any]:
    if isinstance(command, ResetPassword):
        return {
            "user": command.user, "newPassword": command.new_password,
            "initiator": command.initiator.value, "unlock": command.unlock,
            "forceChangeAtNextLogon": command.force_change_at_next_logon,
        }  # fmt: skip
    if isinstance(command, ChangePassword):
        return {"user": command.user, "oldPassword": command.old_password,
                "newPassword": command.new_password}  # fmt: skip
    assert isinstance(command, UnlockAccount | ExpirePassword)  # noqa: S101 - the other two
    return {"user": command.user}


def post(url: str, key: str, path: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(  # noqa: S310 - http to the local host
        f"{url}/{path}", data=json.dumps(payload).encode(), method="POST",
        headers={"x-functions-key": key, "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - see above
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def run(stack: Stack, env: dict[str, str], out: Callable[[str], None] = print) -> bool:
    url, key = env["WRITEBACK_API_URL"], env["WRITEBACK_API_KEY"]
    rows: list[tuple[str, int, str, int, bool, str]] = []
    for what, command, expected in demo.scenario(stack):
        started = time.perf_counter()
        status, answer = post(url, key, PATHS[command.operation.value], body(command))
        elapsed = int(1000 * (time.perf_counter() - started))
        reason = answer.get("reason") or answer.get("error", "?")
        ok = (status, reason) == (STATUS[expected.status.value], expected.value)
        rows.append((what, status, reason, elapsed, ok, answer.get("message", "")))

    admin = stack.dc.admin_connection()
    portal_user = seed.create_user(
        admin, stack.domain.users_ou, stack.domain.dns_domain, seed.unique_name("portal")
    )

    def stamp() -> str:
        admin.search(portal_user.dn, "(objectClass=user)", "BASE", attributes=["pwdLastSet"])
        return str(admin.entries[0]["pwdLastSet"].raw_values[0])

    rows += event_demo.run(env, portal_user.upn, demo.NEW, stamp)
    admin.unbind()

    localstack.stop_relay()
    deadline = time.monotonic() + 6 * localstack.HEARTBEAT_SECONDS
    offline = False
    while not offline and time.monotonic() < deadline:
        offline = localstack.health(key).get("status") == "offline"
        time.sleep(0.5)
    admin = stack.dc.admin_connection()
    domain = stack.domain
    user = seed.create_user(
        admin, domain.users_ou, domain.dns_domain, seed.unique_name("offline")
    ).upn
    admin.unbind()
    started = time.perf_counter()
    status, answer = post(url, key, PATHS["reset"], {"user": user, "newPassword":
                          demo.NEW, "initiator": "admin"})  # fmt: skip
    elapsed = int(1000 * (time.perf_counter() - started))
    expected = Reason.AGENT_UNAVAILABLE
    reason = answer.get("reason", "?")
    rows.append(("reset while the relay is stopped", status, reason, elapsed,
                 (status, reason) == (503, expected.value), answer.get("message", "")))  # fmt: skip
    localstack.start_relay()
    localstack.wait_for_relay(key)

    out("\nWriteback through the HTTP API (local Functions host → Service Bus → relay → AD):")
    out(f"{'':3}{'scenario':36} {'HTTP':>4}  {'outcome':24} {'ms':>6}  message")
    for what, status, reason, elapsed, ok, message in rows:
        mark = "ok" if ok else "!!"
        out(f"{mark:3}{what:36} {status:>4}  {reason:24} {elapsed:>6}  {message}")
    good = all(row[4] for row in rows)
    out(f"\n{sum(r[4] for r in rows)} of {len(rows)} rows as expected.")
    return good
