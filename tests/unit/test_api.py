"""The writeback API through function_app's registered functions, called the documented way
(`build().get_user_function()`), over the real service and a real relay on in-memory ports."""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import function_app
from tests import functions
from tests.unit.cloud_stack import API_KEY, DOMAIN, ENC_KEY, RELAY, call, cloud_stack, request
from writeback import sealing
from writeback.cloud.agents import AgentRecord
from writeback.protocol import Operation, Outcome, Reason
from writeback.protocol.messages import RequestMessage, Secrets

pytestmark = pytest.mark.timeout(60)
PASSWORD = "Api-Unit-Pa55word!"
OLD_PASSWORD = "Api-Old-Pa55word!"


def user() -> str:
    return f"u{uuid.uuid4().hex[:10]}@{DOMAIN}"


def reset_body(**changes: Any) -> dict[str, Any]:
    body = {"user": user(), "newPassword": PASSWORD, "initiator": "admin"}
    body.update(changes)
    return body


class TestBindings:
    def test_every_function_is_declared_as_documented(self) -> None:
        """Routes, methods, anonymous host auth, the heartbeat trigger and the sweeper's timer
        are what infra and the docs say (as the worker reports them to the host), and no
        function is declared beyond them."""
        declared = {name: f.trigger() for name, f in functions.indexed().items()}
        routes = {
            name: (b["route"], tuple(b["methods"]), b["authLevel"])
            for name, b in declared.items()
            if b["type"] == "httpTrigger"
        }
        assert routes == {
            "reset_password": ("v1/passwords/reset", ("POST",), "ANONYMOUS"),
            "change_password": ("v1/passwords/change", ("POST",), "ANONYMOUS"),
            "unlock_account": ("v1/accounts/unlock", ("POST",), "ANONYMOUS"),
            "expire_password": ("v1/passwords/expire", ("POST",), "ANONYMOUS"),
            "user_history": ("v1/users/{user}/requests", ("GET",), "ANONYMOUS"),
            "request_status": ("v1/requests/{request_id}", ("GET",), "ANONYMOUS"),
            "health": ("v1/health", ("GET",), "ANONYMOUS"),
            "domain_keys": ("v1/domains/{domain}/keys", ("GET",), "ANONYMOUS"),
            "domain_policy": ("v1/domains/{domain}/policy", ("GET",), "ANONYMOUS"),
            "user_policy": ("v1/users/{user}/policy", ("GET",), "ANONYMOUS"),
            "pages": ("pages/{*path}", ("GET",), "ANONYMOUS"),
        }
        heartbeat = declared["record_heartbeat"]
        assert heartbeat["type"] == "serviceBusTrigger"
        assert heartbeat["queueName"] == "writeback-heartbeats"
        assert heartbeat["connection"] == "ServiceBusConnection"
        assert not heartbeat.get("isSessionsEnabled")
        sweeper = declared["sweep_replies"]
        assert sweeper["type"] == "timerTrigger"
        assert sweeper["schedule"] == "%WRITEBACK_SWEEP_SCHEDULE%"
        assert sweeper["runOnStartup"] is False
        triggers = {name: binding["type"] for name, binding in declared.items()}
        assert set(triggers) == {*routes, "record_heartbeat", "sweep_replies", "writeback_event",
                                 "entra_audit"}  # fmt: skip


class TestOperations:
    async def test_reset_change_unlock_are_applied(self, tmp_path: Path) -> None:
        """Each operation reaches the directory and answers 200 with its outcome."""
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            body = reset_body(unlock=True, forceChangeAtNextLogon=True)
            status, answer = await call(function_app.reset_password, request("POST", "x", body))
            assert status == 200, answer
            assert (answer["status"], answer["reason"]) == ("applied", "applied")
            assert answer["durationMs"] >= 0
            assert answer["requestId"]
            change = {"user": body["user"], "oldPassword": OLD_PASSWORD, "newPassword": PASSWORD}
            status, _ = await call(function_app.change_password, request("POST", "x", change))
            assert status == 200
            status, _ = await call(
                function_app.unlock_account, request("POST", "x", {"user": body["user"]})
            )
            assert status == 200
            status, expired = await call(
                function_app.expire_password, request("POST", "x", {"user": body["user"]})
            )
            assert (status, expired["reason"]) == (200, "applied"), expired
            operations = [c.operation for c in stack.directory.applied]
            assert operations == [
                Operation.RESET, Operation.CHANGE, Operation.UNLOCK, Operation.EXPIRE
            ]  # fmt: skip
            reset = stack.directory.applied[0]
            assert reset.unlock  # type: ignore[union-attr]
            assert reset.force_change_at_next_logon  # type: ignore[union-attr]
            assert reset.new_password == PASSWORD  # type: ignore[union-attr]

    @pytest.mark.parametrize(
        ("reason", "status"),
        [
            (Reason.POLICY_LENGTH, 422),
            (Reason.OLD_PASSWORD_MISMATCH, 422),
            (Reason.USER_NOT_FOUND, 422),
            (Reason.DIRECTORY_UNAVAILABLE, 502),
            (Reason.DIRECTORY_ACCESS_DENIED, 502),
        ],
    )
    async def test_outcomes_map_to_statuses(
        self, tmp_path: Path, reason: Reason, status: int
    ) -> None:
        """A rejection is 422 and a failure 502, each with its reason and message."""
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            stack.directory.outcomes.append(Outcome(reason, "detail for admins"))
            got, answer = await call(
                function_app.reset_password, request("POST", "x", reset_body())
            )
            assert (got, answer["reason"]) == (status, reason.value)
            assert answer["message"] == reason.message

    async def test_alternate_upn_suffix_routes_to_its_domain(self, tmp_path: Path) -> None:
        """A UPN with a configured alternate suffix reaches the domain's relay."""
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            body = reset_body(user=f"alt{uuid.uuid4().hex[:6]}@example.test")
            status, _ = await call(function_app.reset_password, request("POST", "x", body))
            assert status == 200


class TestHistory:
    async def test_a_users_requests_newest_first_without_secrets_or_details(
        self, tmp_path: Path
    ) -> None:
        """A reset then a change for one user (and a reset for another): the user's history
        holds the two, newest first, whatever the UPN's case; no password, no admin detail."""
        target, other = user(), user()
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            for body in (reset_body(user=target), reset_body(user=other)):
                assert (await call(function_app.reset_password, request("POST", "x", body)))[
                    0
                ] == 200
            change = {"user": target, "oldPassword": PASSWORD, "newPassword": OLD_PASSWORD}
            await call(function_app.change_password, request("POST", "x", change))
            status, answer = await call(
                function_app.user_history,
                request("GET", "x", route_params={"user": target.upper()}),
            )
            assert status == 200, answer
            assert [(e["operation"], e["status"]) for e in answer["requests"]] == [
                ("change", "applied"), ("reset", "applied"),
            ]  # fmt: skip
            assert answer["hours"] == 24
            assert set(answer["requests"][0]) == {
                "requestId", "receivedAt", "operation", "source", "callerKind", "state",
                "status", "reason", "message", "durationMs", "relay",
            }  # fmt: skip
            assert PASSWORD not in json.dumps(answer)

    @pytest.mark.parametrize(
        ("route", "params", "field"),
        [
            ({"user": "no-suffix"}, {}, "user"),
            ({"user": "a@corp.example.test"}, {"hours": "0"}, "hours"),
            ({"user": "a@corp.example.test"}, {"hours": "169"}, "hours"),
            ({"user": "a@corp.example.test"}, {"hours": "-1"}, "hours"),
            ({"user": "a@corp.example.test"}, {"hours": "\u00b2"}, "hours"),
            ({"user": "a@corp.example.test"}, {"hours": "\u0661\u0660"}, "hours"),
        ],
    )
    async def test_bad_input_is_400_naming_the_field(
        self, tmp_path: Path, route: dict[str, str], params: dict[str, str], field: str
    ) -> None:
        async with cloud_stack(tmp_path):
            status, answer = await call(
                function_app.user_history,
                request("GET", "x", route_params=route, params=params),
            )
            assert (status, answer["field"]) == (400, field)

    async def test_it_needs_the_read_role(self, tmp_path: Path) -> None:
        """A key without Writeback.Read is refused 403."""
        async with cloud_stack(tmp_path, api_key_roles="Writeback.Change"):
            status, answer = await call(
                function_app.user_history,
                request("GET", "x", route_params={"user": "a@corp.example.test"}),
            )
            assert (status, answer["error"]) == (403, "auth.forbidden")


class TestThrottle:
    async def test_wrong_current_passwords_end_in_429(self, tmp_path: Path) -> None:
        """After five wrong current passwords for a user, a change is answered 429
        account.throttled with when to try again, and the directory is not asked."""
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            stack.directory.outcomes.extend([Outcome(Reason.OLD_PASSWORD_MISMATCH)] * 5)
            body = {"user": user(), "oldPassword": "Guess-0ld-Pa55!", "newPassword": PASSWORD}
            for _ in range(5):
                status, answer = await call(
                    function_app.change_password, request("POST", "x", body)
                )
                assert (status, answer["reason"]) == (422, "old_password.mismatch")
            status, answer = await call(function_app.change_password, request("POST", "x", body))
            assert (status, answer["status"], answer["reason"]) == (
                429, "rejected", "account.throttled",
            )  # fmt: skip
            assert answer["message"].endswith("Try again in 15 minutes.")
            assert len(stack.directory.applied) == 5


class TestAvailability:
    async def test_no_heartbeat_fails_fast_with_503(self, tmp_path: Path) -> None:
        """Without a relay heartbeat the API answers agent.unavailable at once, sends nothing,
        and audits it."""
        async with cloud_stack(tmp_path) as stack:
            started = time.monotonic()
            status, answer = await call(
                function_app.reset_password, request("POST", "x", reset_body())
            )
            assert (status, answer["reason"]) == (503, "agent.unavailable")
            assert time.monotonic() - started < 1
            assert stack.broker.stats(f"writeback-requests-{DOMAIN}")["active"] == 0
            assert stack.audit.records[answer["requestId"]].reason == "agent.unavailable"

    async def test_a_request_never_sent_may_be_sent_again_under_its_id(
        self, tmp_path: Path
    ) -> None:
        """503 agent.unavailable means nothing was sent: the caller retries with the same
        requestId once a relay is back and it is applied, keeping its first arrival time. Once
        sent, the id is used: another retry is 409, as is the id from another user."""
        async with cloud_stack(tmp_path) as stack:
            body = reset_body(requestId=str(uuid.uuid4()))
            status, answer = await call(function_app.reset_password, request("POST", "x", body))
            assert (status, answer["reason"]) == (503, "agent.unavailable")
            first_arrival = stack.audit.records[body["requestId"]].received_at
            other_user = {**body, "user": user()}
            status, answer = await call(
                function_app.reset_password, request("POST", "x", other_user)
            )
            assert (status, answer["error"]) == (409, "request.duplicate")
            await stack.start_relay()
            status, answer = await call(function_app.reset_password, request("POST", "x", body))
            assert (status, answer["reason"], answer["requestId"]) == (
                200, "applied", body["requestId"],
            )  # fmt: skip
            assert len(stack.directory.applied) == 1
            assert stack.audit.records[body["requestId"]].received_at == first_arrival
            status, answer = await call(function_app.reset_password, request("POST", "x", body))
            assert (status, answer["error"]) == (409, "request.duplicate")

    async def test_a_request_never_sent_is_not_sent_again_after_its_expiry(
        self, tmp_path: Path
    ) -> None:
        """Past the first request's expiry its id is used for good: a late retry is 409 and
        nothing is applied."""
        async with cloud_stack(tmp_path) as stack:
            body = reset_body(requestId=str(uuid.uuid4()))
            status, _ = await call(function_app.reset_password, request("POST", "x", body))
            assert status == 503
            await stack.start_relay()
            later = stack.service.clock
            stack.service.clock = lambda: later() + 3600
            status, answer = await call(function_app.reset_password, request("POST", "x", body))
            assert (status, answer["error"]) == (409, "request.duplicate")
            assert stack.directory.applied == []

    async def test_slow_relay_gives_504_then_the_poll_shows_the_outcome(
        self, tmp_path: Path
    ) -> None:
        """With a fresh heartbeat but no relay serving, the caller gets 504 pending; once the
        relay serves, polling the request id shows it applied."""
        async with cloud_stack(tmp_path, wait=0.5) as stack:
            await stack.start_relay()
            await stack.stop_relay()  # the heartbeat stays fresh for three intervals
            status, answer = await call(
                function_app.reset_password, request("POST", "x", reset_body())
            )
            assert (status, answer["state"], answer["reason"]) == (504, "pending", "agent.timeout")
            poll = request("GET", "x", route_params={"request_id": answer["requestId"]})
            status, pending = await call(function_app.request_status, poll)
            assert (status, pending["state"]) == (200, "pending")
            await stack.start_relay()
            deadline = time.monotonic() + 10
            while pending["state"] == "pending" and time.monotonic() < deadline:
                status, pending = await call(function_app.request_status, poll)
            assert (status, pending["state"], pending["status"]) == (200, "completed", "applied")
            assert stack.audit.records[answer["requestId"]].relay == RELAY

    async def test_health_keys_and_policy(self, tmp_path: Path) -> None:
        """Health lists the relay as fresh, keys are public encryption keys only, and the policy
        is the one the relay reported."""
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            status, health = await call(function_app.health, request("GET", "x"))
            assert (status, health["status"]) == (200, "ok")
            (domain,) = health["domains"]
            assert (domain["domain"], domain["relays"][0]["relay"]) == (DOMAIN, RELAY)
            keys_request = request("GET", "x", route_params={"domain": DOMAIN})
            status, jwks = await call(function_app.domain_keys, keys_request)
            assert status == 200
            assert [k["kid"] for k in jwks["keys"]] == [ENC_KEY.kid]
            assert all("d" not in k for k in jwks["keys"])
            assert {k["use"] for k in jwks["keys"]} == {"enc"}
            status, policy = await call(function_app.domain_policy, keys_request)
            assert (status, policy["relay"]) == (200, RELAY)
            assert policy["policy"]
            unknown = request("GET", "x", route_params={"domain": "other.example"})
            status, _ = await call(function_app.domain_keys, unknown)
            assert status == 404


class TestCallerSealed:
    async def test_a_password_sealed_by_the_caller_is_applied(self, tmp_path: Path) -> None:
        """A caller seals to the published keys, bound to its request id and expiry; the
        Function never sees the password and the relay applies it."""
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            keys_request = request("GET", "x", route_params={"domain": DOMAIN})
            _, jwks = await call(function_app.domain_keys, keys_request)
            target, request_id, expires = user(), str(uuid.uuid4()), int(time.time()) + 60
            binding = RequestMessage(
                id=request_id, domain=DOMAIN, operation=Operation.RESET, user=target,
                issued_at=0, expires_at=expires,
            ).binding()  # fmt: skip
            sealed = sealing.seal(
                Secrets(new_password=PASSWORD), binding, sealing.public_keyset(jwks, "jwks")
            )
            body = {
                "user": target, "sealedPassword": sealed, "requestId": request_id,
                "expiresAt": expires, "initiator": "self-service",
            }  # fmt: skip
            status, answer = await call(function_app.reset_password, request("POST", "x", body))
            assert (status, answer["requestId"]) == (200, request_id)
            assert stack.directory.applied[-1].new_password == PASSWORD  # type: ignore[union-attr]
            assert stack.audit.records[request_id].sealed_by_caller
            # The same sealed body again: the request id was used.
            status, again = await call(function_app.reset_password, request("POST", "x", body))
            assert (status, again["error"]) == (409, "request.duplicate")

    async def test_sealed_for_another_request_is_refused_up_front(self, tmp_path: Path) -> None:
        """A sealed password bound to other values is a 400 naming sealedPassword."""
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            expires = int(time.time()) + 60
            binding = RequestMessage(
                id="other-request-id", domain=DOMAIN, operation=Operation.RESET, user=user(),
                issued_at=0, expires_at=expires,
            ).binding()  # fmt: skip
            sealed = sealing.seal(Secrets(new_password=PASSWORD), binding, sealing.public_keyset(
                {"keys": [ENC_KEY.as_dict(private=False)]}, "jwks"))  # fmt: skip
            body = {
                "user": user(), "sealedPassword": sealed, "requestId": str(uuid.uuid4()),
                "expiresAt": expires, "initiator": "admin",
            }  # fmt: skip
            status, answer = await call(function_app.reset_password, request("POST", "x", body))
            assert (status, answer["field"]) == (400, "sealedPassword")
            assert stack.directory.applied == []

    async def test_a_recipient_kid_of_another_type_is_a_400(self, tmp_path: Path) -> None:
        """A caller-sealed JWE whose recipient kid is a list or an object: 400 naming
        sealedPassword, no traceback, nothing sent."""
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            for kid in ([ENC_KEY.kid], {"k": 1}, 7):
                recipient = {"header": {"alg": "RSA-OAEP-256", "kid": kid}, "encrypted_key": "AA"}
                sealed = {"recipients": [recipient], "protected": "e30", "iv": "AA",
                          "ciphertext": "AA", "tag": "AA"}  # fmt: skip
                body = {
                    "user": user(), "sealedPassword": sealed, "requestId": str(uuid.uuid4()),
                    "expiresAt": int(time.time()) + 60, "initiator": "admin",
                }  # fmt: skip
                status, answer = await call(function_app.reset_password, request("POST", "x", body))
                assert (status, answer.get("field")) == (400, "sealedPassword"), answer
            assert stack.directory.applied == []


class TestAuthentication:
    async def test_missing_and_wrong_keys_are_401(self, tmp_path: Path) -> None:
        """No credential and a wrong key are refused before anything else happens."""
        async with cloud_stack(tmp_path) as stack:
            for key in (None, "wrong-key-" + "x" * 40):
                req = request("POST", "x", reset_body(), key=key)
                status, answer = await call(function_app.reset_password, req)
                assert status == 401
                assert answer["error"].startswith("auth.")
            assert stack.audit.records == {}

    async def test_a_key_without_the_role_is_403(self, tmp_path: Path) -> None:
        """A caller allowed only self-service resets cannot make an admin reset or unlock."""
        async with cloud_stack(tmp_path, api_key_roles="Writeback.Reset.SelfService") as stack:
            await stack.start_relay()
            status, answer = await call(
                function_app.reset_password, request("POST", "x", reset_body())
            )
            assert (status, answer["error"]) == (403, "auth.forbidden")
            body = reset_body(initiator="self-service")
            status, _ = await call(function_app.reset_password, request("POST", "x", body))
            assert status == 200


INVALID = [
    (b"not json", None),
    (b"[1, 2]", None),
    (json.dumps({"newPassword": PASSWORD, "initiator": "admin"}).encode(), "user"),
    (json.dumps(reset_body(user="no-at-sign")).encode(), "user"),
    (json.dumps(reset_body(user="x@unknown.example")).encode(), "user"),
    (json.dumps(reset_body(initiator="robot")).encode(), "initiator"),
    (json.dumps(reset_body(unlock="yes")).encode(), "unlock"),
    (json.dumps(reset_body(newPassword="")).encode(), "newPassword"),
    (json.dumps(reset_body(newPassword="x" * 300)).encode(), "newPassword"),
    (json.dumps(reset_body(newPassword=7)).encode(), "newPassword"),
    (json.dumps(reset_body(extra=1)).encode(), "extra"),
    (json.dumps(reset_body(expiresAt=1)).encode(), "expiresAt"),
    (json.dumps(reset_body(sealedPassword={"recipients": []})).encode(), "newPassword"),
    (json.dumps(reset_body(requestId="../etc")).encode(), "requestId"),
    # One account under other spellings (each would get its own throttle count and history).
    *(
        (json.dumps(reset_body(user=spelling)).encode(), "user")
        for spelling in (
            f" a@{DOMAIN}",
            f"a@{DOMAIN} ",
            f"\u3000a@{DOMAIN}",
            f"\u00a0a@{DOMAIN}",
            f"a\u2003b@{DOMAIN}",
            f"\ta@{DOMAIN}",
        )
    ),
    # A member named twice: a proxy reading the first would see another user than we do.
    (
        f'{{"user": "x@{DOMAIN}", "user": "y@{DOMAIN}", "newPassword": "{PASSWORD}"}}'.encode(),
        "user",
    ),
]


class TestInvalidInput:
    @pytest.mark.parametrize(("raw", "field"), INVALID)
    async def test_each_invalid_body_is_a_400_naming_the_field(
        self, tmp_path: Path, raw: bytes, field: str | None
    ) -> None:
        """Every class of bad body is refused with 400, its reason and the field at fault."""
        async with cloud_stack(tmp_path):
            status, answer = await call(function_app.reset_password, request("POST", "x", raw=raw))
            assert status == 400, answer
            assert answer.get("field") == field
            assert answer["error"] in {"request.invalid", "user.unknown_domain"}

    async def test_unknown_and_malformed_request_ids(self, tmp_path: Path) -> None:
        """An unknown id is 404, an id no request could have is 400."""
        async with cloud_stack(tmp_path):
            unknown = request("GET", "x", route_params={"request_id": str(uuid.uuid4())})
            assert (await call(function_app.request_status, unknown))[0] == 404
            bad = request("GET", "x", route_params={"request_id": "a/b"})
            assert (await call(function_app.request_status, bad))[0] == 400

    @settings(
        max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(
        body=st.one_of(
            st.binary(max_size=200),
            st.dictionaries(
                st.sampled_from(
                    [
                        "user",
                        "newPassword",
                        "oldPassword",
                        "sealedPassword",
                        "initiator",
                        "unlock",
                        "forceChangeAtNextLogon",
                        "requestId",
                        "expiresAt",
                        "x",
                    ]
                ),
                st.recursive(
                    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
                    lambda inner: (
                        st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=5), inner, max_size=3)
                    ),
                    max_leaves=8,
                ),
            ).map(lambda d: json.dumps(d).encode()),
        ),
        operation=st.sampled_from(["reset_password", "change_password", "unlock_account"]),
    )
    async def test_fuzzed_bodies_never_produce_a_5xx_other_than_unavailable(
        self, tmp_path: Path, body: bytes, operation: str
    ) -> None:
        """Whatever the body, the answer is a 4xx, or 504 pending for a valid one (a relay
        looks alive but serves nothing here): never a 500."""
        async with cloud_stack(tmp_path, wait=0.01) as stack:
            now = time.time()
            await stack.agents.record(AgentRecord(DOMAIN, RELAY, "test", now, now, {}, None, None))
            status, answer = await call(
                getattr(function_app, operation), request("POST", "x", raw=body)
            )
            assert 400 <= status < 500 or (status, answer.get("reason")) == (
                504, "agent.timeout"
            ), answer  # fmt: skip


class TestNoSecrets:
    async def test_audit_and_logs_hold_no_password(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """After resets, a change and a rejection, neither the audit records nor any log line
        contains a password or the API key."""
        caplog.set_level(logging.DEBUG)
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            body = reset_body()
            await call(function_app.reset_password, request("POST", "x", body))
            change = {"user": body["user"], "oldPassword": OLD_PASSWORD, "newPassword": PASSWORD}
            stack.directory.outcomes.append(Outcome(Reason.OLD_PASSWORD_MISMATCH))
            await call(function_app.change_password, request("POST", "x", change))
            records = [repr(r) + json.dumps(r.__dict__) for r in stack.audit.records.values()]
            assert len(records) == 2
        text = "\n".join(records + [r.getMessage() + repr(r.__dict__) for r in caplog.records])
        for secret in (PASSWORD, OLD_PASSWORD, API_KEY):
            assert secret not in text


class TestTracing:
    async def test_the_callers_trace_reaches_the_relays_logs_and_the_audit(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A W3C traceparent sent by the caller travels in the signed request: the relay logs
        its trace id and the audit record keeps it."""
        caplog.set_level(logging.INFO)
        trace = "4bf92f3577b34da6a3ce929d0e0e4736"
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            req = request(
                "POST",
                "x",
                reset_body(),
                headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
            )
            status, answer = await call(function_app.reset_password, req)
            assert status == 200
            assert stack.audit.records[answer["requestId"]].trace_id == trace
        handled = [r for r in caplog.records if r.getMessage() == "request_handled"]
        assert [getattr(r, "trace_id", None) for r in handled] == [trace]
