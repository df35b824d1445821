"""The writeback API end to end on the local stack: HTTP → function_app.py on the local host →
Service Bus (local broker) → relay process → Samba AD DC → signed outcome → HTTP answer, with
the audit trail in Azurite."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import ldap3
import pytest
from azure.data.tables import TableClient

from devstack import seed
from tests.e2e.conftest import WAIT_SECONDS, LocalCloud, healthy, wait_until
from tests.testbed import TestBed
from writeback import sealing
from writeback.protocol import Operation
from writeback.protocol.messages import RequestMessage, Secrets

pytestmark = pytest.mark.timeout(300)
NEW = "Writeback-Http-Pa55!"
SECOND = "Second-Http-Pa55w0rd!"
USED: list[str] = [NEW, SECOND]  # every password the tests send, scanned for at the end
REQUEST_IDS: list[str] = []
NewUser = Callable[..., seed.Account]
CanBind = Callable[[seed.Account, str], bool]
Read = Callable[[str, list[str]], dict[str, str]]


def api(
    stack: LocalCloud, method: str, path: str, body: object = None, *, key: str | None = ""
) -> tuple[int, dict[str, Any]]:
    """One HTTP call to the API (the stack's key unless `key` says otherwise)."""
    headers = {"Content-Type": "application/json"}
    key = stack.api_key if key == "" else key
    if key is not None:
        headers["x-functions-key"] = key
    data = None if body is None else json.dumps(body).encode()
    url = f"{stack.url}/{path}"
    call = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310
    # (plain http to the loopback host: the local stack)
    try:
        with urllib.request.urlopen(call, timeout=60) as response:  # noqa: S310 - see above
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    answer = json.loads(raw or b"{}")
    if "requestId" in answer:
        REQUEST_IDS.append(answer["requestId"])
    return status, answer


def reset(stack: LocalCloud, upn: str, password: str = NEW, **extra: Any) -> tuple[int, Any]:
    USED.append(password)
    body = {"user": upn, "newPassword": password, "initiator": "admin", **extra}
    return api(stack, "POST", "v1/passwords/reset", body)


def change(stack: LocalCloud, upn: str, old: str, new: str) -> tuple[int, Any]:
    USED.extend((old, new))
    body = {"user": upn, "oldPassword": old, "newPassword": new}
    return api(stack, "POST", "v1/passwords/change", body)


class TestOperations:
    def test_reset_change_unlock(
        self, ready: LocalCloud, new_user: NewUser, can_bind: CanBind, testbed: TestBed
    ) -> None:
        """An admin reset with unlock, a change and an unlock are applied in AD."""
        user = new_user("e2e")
        seed.lock_out(testbed.dc, user, seed.DOMAIN_POLICY["lockout_threshold"])
        status, answer = reset(ready, user.upn, unlock=True)
        assert (status, answer["status"], answer["reason"]) == (200, "applied", "applied")
        assert can_bind(user, NEW)
        status, answer = change(ready, user.upn, NEW, SECOND)
        assert (status, answer["reason"]) == (200, "applied")
        assert can_bind(user, SECOND)
        status, answer = api(ready, "POST", "v1/accounts/unlock", {"user": user.upn})
        assert (status, answer["reason"]) == (200, "applied")
        poll = api(ready, "GET", f"v1/requests/{answer['requestId']}")
        assert poll == (200, {**answer, "state": "completed"})
        status, history = api(ready, "GET", f"v1/users/{user.upn}/requests?hours=1")
        assert status == 200
        assert [e["operation"] for e in history["requests"]] == ["unlock", "change", "reset"]
        assert history["requests"][0]["requestId"] == answer["requestId"]

    def test_expire(
        self, ready: LocalCloud, new_user: NewUser, can_bind: CanBind, read: Read
    ) -> None:
        """An expire makes AD require a new password at next logon, without changing it; an
        account whose password never expires is refused with its reason and left alone."""
        user = new_user("mustchange")
        status, answer = api(ready, "POST", "v1/passwords/expire", {"user": user.upn})
        assert (status, answer["status"], answer["reason"]) == (200, "applied", "applied")
        assert answer["message"].startswith("You must choose a new password")
        assert read(user.dn, ["pwdLastSet"]) == {"pwdLastSet": "0"}
        assert not can_bind(user, user.password)
        never = new_user("neverexp", never_expires=True)
        status, answer = api(ready, "POST", "v1/passwords/expire", {"user": never.upn})
        assert (status, answer["reason"]) == (422, "account.password_never_expires")
        assert can_bind(never, never.password)
        status, answer = api(
            ready, "POST", "v1/passwords/expire", {"user": user.upn, "newPassword": NEW}
        )
        assert (status, answer["error"], answer["field"]) == (400, "request.invalid", "newPassword")

    def test_self_service_reset(
        self, ready: LocalCloud, new_user: NewUser, can_bind: CanBind
    ) -> None:
        """A self-service reset is applied."""
        user = new_user("sspr")
        status, answer = reset(ready, user.upn, initiator="self-service")
        assert (status, answer["reason"]) == (200, "applied")
        assert can_bind(user, NEW)


class TestReasons:
    def test_every_directory_reason_reaches_the_caller(
        self, ready: LocalCloud, new_user: NewUser, testbed: TestBed, admin: ldap3.Connection
    ) -> None:
        """Each rejection from the directory arrives over HTTP as 422 with its reason."""
        domain = testbed.domain
        plain = new_user("rsn")
        strict = new_user("rsnstrict", groups=(domain.strict_group,))
        aged = new_user("rsnage", groups=(domain.min_age_group,))
        locked = new_user("rsnlock")
        seed.lock_out(testbed.dc, locked, seed.DOMAIN_POLICY["lockout_threshold"])
        # The Min Age PSO's day has not passed since the account got its password.
        cases = [
            ("too short", reset(ready, plain.upn, "Ab1!x"), "policy.length"),
            ("not complex", reset(ready, plain.upn, "onlylowercaseletters"), "policy.complexity"),
            ("the PSO's length", reset(ready, strict.upn, "Short-Pa55!"), "policy.length"),
            ("wrong old", change(ready, plain.upn, "Not-The-0ld-One!", NEW),
             "old_password.mismatch"),
            ("same as now", change(ready, plain.upn, plain.password, plain.password),
             "policy.history"),
            ("min age", change(ready, aged.upn, aged.password, NEW), "policy.min_age"),
            ("locked out", change(ready, locked.upn, locked.password, NEW), "account.locked"),
            ("protected", reset(ready, new_user("rsnadm", admin_count=True).upn), "user.protected"),
            ("outside the OUs", reset(ready, new_user("rsnout", ou=domain.outside_ou).upn),
             "user.out_of_scope"),
            ("disabled", reset(ready, new_user("rsnoff", disabled=True).upn), "account.disabled"),
            ("no such user", reset(ready, f"nobody-{uuid.uuid4().hex[:6]}@{domain.dns_domain}"),
             "user.not_found"),
        ]  # fmt: skip
        got = {what: (status, answer.get("reason")) for what, (status, answer), _ in cases}
        assert got == {what: (422, reason) for what, _, reason in cases}

    def test_bad_input_and_credentials(self, ready: LocalCloud) -> None:
        """Unknown suffix and bad fields are 400 naming the field; no or a wrong key is 401."""
        status, answer = reset(ready, "someone@unknown.example")
        assert (status, answer["error"], answer["field"]) == (400, "user.unknown_domain", "user")
        status, answer = api(ready, "POST", "v1/passwords/reset", {"user": "x@y.z", "bad": 1})
        assert (status, answer["field"]) == (400, "bad")
        assert api(ready, "GET", "v1/health", key=None)[0] == 401
        assert api(ready, "GET", "v1/health", key="not-the-key-" + "x" * 30)[0] == 401


class TestCallerSealed:
    def test_a_password_sealed_by_the_caller(
        self, ready: LocalCloud, new_user: NewUser, can_bind: CanBind
    ) -> None:
        """A caller fetches the domain's keys, seals the password itself, and it is applied."""
        user = new_user("sealed")
        status, jwks = api(ready, "GET", f"v1/domains/{ready.domain}/keys")
        assert status == 200
        request_id, expires = str(uuid.uuid4()), int(time.time()) + 90
        binding = RequestMessage(
            id=request_id, domain=ready.domain, operation=Operation.RESET, user=user.upn,
            issued_at=0, expires_at=expires,
        ).binding()  # fmt: skip
        sealed = sealing.seal(Secrets(new_password=NEW), binding, sealing.public_keyset(jwks, "k"))
        body = {
            "user": user.upn, "sealedPassword": sealed, "requestId": request_id,
            "expiresAt": expires, "initiator": "self-service",
        }  # fmt: skip
        status, answer = api(ready, "POST", "v1/passwords/reset", body)
        assert (status, answer["reason"], answer["requestId"]) == (200, "applied", request_id)
        assert can_bind(user, NEW)

    def test_policy_is_published(self, ready: LocalCloud) -> None:
        """The domain's password rules, as the relay reported them, are readable."""
        status, policy = api(ready, "GET", f"v1/domains/{ready.domain}/policy")
        assert status == 200
        assert policy["policy"]["minLength"] == seed.DOMAIN_POLICY["min_length"]


class TestRelayAvailability:
    def test_a_slow_relay_gives_504_and_the_poll_shows_the_outcome(
        self, ready: LocalCloud, new_user: NewUser, can_bind: CanBind
    ) -> None:
        """A paused relay (heartbeat still fresh) makes the caller wait and get 504 pending;
        once it resumes, the request id's status shows the reset applied."""
        user = new_user("slow")
        assert ready.relay is not None
        os.kill(ready.relay.pid, signal.SIGSTOP)
        try:
            status, answer = reset(ready, user.upn)
        finally:
            os.kill(ready.relay.pid, signal.SIGCONT)
        assert (status, answer["state"], answer["reason"]) == (504, "pending", "agent.timeout")
        assert answer["durationMs"] >= WAIT_SECONDS * 1000 * 0.9
        polled: dict[str, Any] = {}

        def completed() -> bool:
            polled.update(api(ready, "GET", f"v1/requests/{answer['requestId']}")[1])
            return polled["state"] == "completed"

        wait_until(completed, 60, "the late outcome")
        assert (polled["status"], polled["reason"]) == ("applied", "applied")
        assert can_bind(user, NEW)

    def test_a_stopped_relay_gives_503_fast(self, ready: LocalCloud, new_user: NewUser) -> None:
        """With no heartbeat for three intervals the API answers 503 at once, and serves again
        as soon as the relay is back."""
        user = new_user("offline")
        ready.stop_relay()
        wait_until(lambda: healthy(ready, "offline"), 30, "the domain to go offline")
        started = time.monotonic()
        status, answer = reset(ready, user.upn)
        assert (status, answer["reason"]) == (503, "agent.unavailable")
        assert time.monotonic() - started < 2
        ready.start_relay()
        wait_until(lambda: healthy(ready, "ok"), 30, "the relay to come back")
        assert reset(ready, user.upn, SECOND)[0] == 200


class TestNoSecrets:
    def test_audit_holds_every_request_and_no_secret(self, local_cloud: LocalCloud) -> None:
        """Every request id answered over HTTP has its audit entity, and no entity and no log
        line of the host or the relay contains a password or the API key."""
        table = TableClient.from_connection_string(
            local_cloud.azurite.connection_string, "WritebackAudit"
        )
        with table:
            entities = list(table.list_entities())
        stored = {entity["PartitionKey"] for entity in entities}
        assert REQUEST_IDS, "the tests above made requests"
        assert set(REQUEST_IDS) <= stored
        text = json.dumps([dict(e) for e in entities], default=str) + local_cloud.log_text()
        for secret in {*USED, local_cloud.api_key}:
            assert secret not in text
