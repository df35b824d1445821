"""Strict parsing of the wire messages: every field, every limit, a precise reason."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from writeback.errors import ProtocolError
from writeback.protocol import Initiator, Operation, Reason
from writeback.protocol.accounts import upn_problem
from writeback.protocol.messages import (
    MAX_LIFETIME_SECONDS,
    MAX_MESSAGE_BYTES,
    Heartbeat,
    OutcomeMessage,
    RequestMessage,
    Secrets,
    decode,
    domain_problem,
    utf16_length,
)

NOW = 1_800_000_000


def request_payload(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "v": 1,
        "type": "request",
        "id": "req-1",
        "domain": "corp.example.test",
        "operation": "reset",
        "user": "alice@corp.example.test",
        "iat": NOW,
        "exp": NOW + 60,
        "initiator": "admin",
        "unlock": False,
        "forceChangeAtNextLogon": False,
        "sealed": {"recipients": []},
        "traceparent": None,
        "replySession": None,
    }
    payload.update(changes)
    return payload


def refused(parse: Any, payload: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        parse(payload)
    assert caught.value.reason == Reason.REQUEST_MALFORMED
    return caught.value


class TestRequest:
    def test_traceparent_travels_and_is_checked(self) -> None:
        """A W3C traceparent survives the round trip; anything else in its place is refused."""
        good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        assert RequestMessage.parse(request_payload(traceparent=good)).traceparent == good
        for bad in (
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            7,
        ):
            assert refused(RequestMessage.parse, request_payload(traceparent=bad)).field == (
                "traceparent"
            )

    def test_reply_session_travels_and_is_checked(self) -> None:
        """A reply session like a request id survives the round trip; null means none; anything
        else in its place (empty, too long, a space, a leading dot, not a string) is refused."""
        good = "cloud-" + "0123456789abcdef" * 2
        parsed = RequestMessage.parse(request_payload(replySession=good))
        assert parsed.reply_session == good
        assert parsed.to_payload()["replySession"] == good
        assert RequestMessage.parse(request_payload()).reply_session is None
        for bad in ("", "x" * 129, "cloud 1", ".cloud", "cloud/1", 7, ["cloud-1"]):
            assert refused(RequestMessage.parse, request_payload(replySession=bad)).field == (
                "replySession"
            )

    def test_reply_session_is_required(self) -> None:
        """Like every field, replySession must be present (null when there is none)."""
        payload = request_payload()
        del payload["replySession"]
        assert refused(RequestMessage.parse, payload).field == "replySession"

    def test_reply_session_is_not_bound_to_the_secrets(self) -> None:
        """The binding (JWE AAD) leaves the reply session out: a caller seals before it can know
        which cloud instance sends its request."""
        plain = RequestMessage.parse(request_payload())
        answered = RequestMessage.parse(request_payload(replySession="cloud-1"))
        assert plain.binding() == answered.binding()

    def test_round_trip(self) -> None:
        """A parsed payload serialises back to itself."""
        payload = request_payload()
        assert RequestMessage.parse(payload).to_payload() == payload

    def test_missing_field_is_named(self) -> None:
        """A missing field is refused, naming the field."""
        payload = request_payload()
        del payload["user"]
        assert refused(RequestMessage.parse, payload).field == "user"

    def test_extra_field_is_named(self) -> None:
        """An unknown field is refused, naming it (no silent extensions)."""
        assert refused(RequestMessage.parse, request_payload(password="x")).field == "password"

    @pytest.mark.parametrize("version", [0, 2, "1", None])
    def test_unknown_version(self, version: Any) -> None:
        """Only version 1 is understood."""
        error = refused(RequestMessage.parse, request_payload(v=version))
        assert (error.field, "unsupported version" in error.problem) == ("v", True)

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("id", ""),
            ("id", "has space"),
            ("id", "x" * 129),
            ("domain", "CORP.example.test"),
            ("domain", "localhost"),
            ("domain", "-bad.example.test"),
            ("operation", "delete"),
            ("user", "alice"),
            ("user", "alice@corp\x00"),
            ("user", "a" * 1020 + "@corp.x"),
            ("iat", -1),
            ("iat", "now"),
            ("iat", True),
            ("exp", NOW),
            ("unlock", "yes"),
            ("initiator", "robot"),
            ("type", "outcome"),
        ],
    )
    def test_bad_values_are_named(self, field: str, value: Any) -> None:
        """Each mistyped or out-of-range field is refused by name."""
        assert refused(RequestMessage.parse, request_payload(**{field: value})).field == field

    def test_lifetime_is_capped(self) -> None:
        """A request may live at most MAX_LIFETIME_SECONDS, so the replay journal outlives it."""
        payload = request_payload(exp=NOW + MAX_LIFETIME_SECONDS + 1)
        assert refused(RequestMessage.parse, payload).field == "exp"

    @pytest.mark.parametrize(
        ("operation", "changes", "field"),
        [
            ("reset", {"initiator": None}, "initiator"),
            ("change", {}, "initiator"),
            ("change", {"initiator": None, "unlock": True}, "unlock"),
            ("unlock", {"initiator": None}, "sealed"),
            ("expire", {"initiator": None}, "sealed"),
            (
                "expire",
                {"initiator": None, "sealed": None, "forceChangeAtNextLogon": True},
                "unlock",
            ),
            ("reset", {"sealed": None}, "sealed"),
            ("reset", {"sealed": "a.b.c"}, "sealed"),
        ],
    )
    def test_operation_rules(self, operation: str, changes: dict[str, Any], field: str) -> None:
        """Initiator only on resets, unlock/force only on resets, secrets on all but unlock and
        expire."""
        payload = request_payload(operation=operation, **changes)
        assert refused(RequestMessage.parse, payload).field == field

    def test_an_expire_carries_no_secrets(self) -> None:
        """An expire is the user alone: no initiator, no flags, nothing sealed."""
        payload = request_payload(operation="expire", initiator=None, sealed=None)
        message = RequestMessage.parse(payload)
        assert (message.operation, message.sealed, message.initiator) == ("expire", None, None)

    def test_binding_covers_the_identity(self) -> None:
        """The AAD changes with id, domain, operation, user and expiry, and nothing else."""
        base = RequestMessage.parse(request_payload())
        variants = [
            request_payload(id="req-2"),
            request_payload(user="bob@corp.example.test"),
            request_payload(exp=NOW + 61),
            request_payload(domain="other.example.test"),
            request_payload(operation="change", initiator=None),
        ]
        bindings = {RequestMessage.parse(p).binding() for p in variants}
        assert base.binding() not in bindings
        assert len(bindings) == len(variants)
        assert RequestMessage.parse(request_payload(unlock=True)).binding() == base.binding()


class TestSecrets:
    def test_change_needs_both_passwords(self) -> None:
        """A change's secrets hold the old and the new password, nothing else."""
        assert (
            refused(
                lambda v: Secrets.parse(v, Operation.CHANGE), {"v": 1, "newPassword": "a"}
            ).field
            == "secrets.oldPassword"
        )
        assert refused(
            lambda v: Secrets.parse(v, Operation.RESET),
            {"v": 1, "newPassword": "a", "oldPassword": "b"},
        ).field == ("secrets.oldPassword")

    @pytest.mark.parametrize("password", ["", "a\x00b", "\U0001f600" * 129, "x" * 257, "a\ud800"])
    def test_password_limits(self, password: str) -> None:
        """Empty, NUL and more than 256 UTF-16 units are refused (an emoji counts two)."""
        error = refused(
            lambda v: Secrets.parse(v, Operation.RESET), {"v": 1, "newPassword": password}
        )
        assert error.field == "secrets.newPassword"

    def test_256_units_is_allowed(self) -> None:
        """The limit itself is allowed: 128 emoji are 256 UTF-16 units."""
        secrets = Secrets.parse({"v": 1, "newPassword": "\U0001f600" * 128}, Operation.RESET)
        assert secrets.new_password is not None
        assert utf16_length(secrets.new_password) == 256


class TestOutcomeAndHeartbeat:
    def outcome(self, **changes: Any) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "v": 1,
            "type": "outcome",
            "requestId": "req-1",
            "domain": "corp.example.test",
            "relay": "relay-a",
            "status": "rejected",
            "reason": "policy.length",
            "message": "Too short.",
            "detail": "7 < 8",
            "completedAt": NOW,
            "durationMs": 40,
        }
        payload.update(changes)
        return payload

    def test_outcome_round_trip(self) -> None:
        """An outcome serialises back to itself."""
        assert OutcomeMessage.parse(self.outcome()).to_payload() == {
            **self.outcome(),
            "account": None,
        }

    def test_status_must_match_reason(self) -> None:
        """A status that contradicts the reason (forged success) is refused."""
        assert refused(OutcomeMessage.parse, self.outcome(status="applied")).field == "status"

    def test_unknown_reason(self) -> None:
        """Reason codes outside the contract are refused."""
        assert refused(OutcomeMessage.parse, self.outcome(reason="policy.vibes")).field == "reason"

    def test_heartbeat_round_trip_and_limits(self) -> None:
        """Heartbeats round-trip; capabilities must be flat scalars."""
        heartbeat = Heartbeat(
            "relay-a",
            "corp.example.test",
            "0.1.0",
            NOW,
            {"policyHints": None, "dc": "dc1"},
            {"minLength": 8},
            "boom",
        )
        payload = heartbeat.to_payload()
        assert Heartbeat.parse(payload) == heartbeat
        payload["capabilities"] = {"nested": {"x": 1}}
        assert refused(Heartbeat.parse, payload).field == "capabilities"

    def test_heartbeat_names_the_domain_by_netbios_and_sid(self) -> None:
        """A heartbeat may carry the domain's NetBIOS name and SID (upper case, a domain SID);
        one of an earlier version, without them, still parses."""
        heartbeat = Heartbeat(
            "relay-a", "corp.example.test", "0.1.0", NOW, {}, None, None,
            netbios="CORP", domain_sid="S-1-5-21-1-2-3",
        )  # fmt: skip
        payload = heartbeat.to_payload()
        assert Heartbeat.parse(payload) == heartbeat
        for field, bad in (("netbios", "corp"), ("netbios", "A\\B"), ("domainSid", "S-1-5-32")):
            assert refused(Heartbeat.parse, {**payload, field: bad}).field == field
        del payload["netbios"], payload["domainSid"]
        assert Heartbeat.parse(payload).netbios is None

    def test_outcome_names_the_account_it_resolved(self) -> None:
        """An outcome carries the account the relay found (its GUID in canonical form required);
        one without `account` (an earlier relay) parses as None."""
        account = {
            "guid": "3f2504e0-4f89-41d3-9a0c-0305e82c3301",
            "sid": "S-1-5-21-1-2-3-1104",
            "upn": "alice@corp.example.test",
            "samAccountName": "alice",
        }
        parsed = OutcomeMessage.parse(self.outcome(account=account))
        assert parsed.account is not None
        assert parsed.account.guid == account["guid"]
        assert parsed.to_payload()["account"] == account
        for field, bad in (("guid", account["guid"].upper()), ("sid", "S-1-x"), ("guid", None)):
            outcome = self.outcome(account={**account, field: bad})
            assert refused(OutcomeMessage.parse, outcome).field == f"account.{field}"
        assert OutcomeMessage.parse(self.outcome()).account is None


class TestLimits:
    def test_oversize_json(self) -> None:
        """More than MAX_MESSAGE_BYTES is refused before parsing."""
        assert (
            "larger than"
            in refused(lambda v: decode(v, "payload"), b" " * (MAX_MESSAGE_BYTES + 1)).problem
        )

    def test_a_member_named_twice_is_refused(self) -> None:
        """`{"user": a, "user": b}` is malformed, at any depth: a reader that keeps the first
        and one that keeps the last would see different requests."""
        for raw in ('{"user": "a@x.y", "user": "b@x.y"}', '{"s": {"k": 1, "k": 2}}'):
            assert "appears twice" in refused(lambda v: decode(v, "payload"), raw).problem
        assert decode('{"user": "a@x.y", "users": ["a", "a"]}', "payload") == {
            "user": "a@x.y", "users": ["a", "a"],
        }  # fmt: skip

    def test_white_space_around_a_upn_is_refused(self) -> None:
        """Leading, trailing and non-ASCII white space make another spelling of one account;
        an inner ASCII space (legal in AD) is kept."""
        for upn in (" a@x.y", "a@x.y ", "\u3000a@x.y", "\u00a0a@x.y", "a\u2003b@x.y"):
            assert upn_problem(upn) is not None, repr(upn)
        assert upn_problem("ann lee@x.y") is None

    def test_deeply_nested_json(self) -> None:
        """Pathological nesting is a protocol error, not a RecursionError."""
        refused(lambda v: decode(v, "payload"), "[" * 50_000 + "]" * 50_000)

    @given(st.text(max_size=80))
    @settings(max_examples=100, deadline=None)
    def test_upn_check_never_crashes(self, upn: str) -> None:
        """Any string gets a verdict; control characters never pass."""
        problem = upn_problem(upn)
        if any(ord(c) < 0x20 for c in upn):
            assert problem is not None

    def test_domains(self) -> None:
        """Lower-case multi-label DNS names only."""
        assert domain_problem("corp.example.com") is None
        assert domain_problem("a" * 64 + ".com") is not None
        assert domain_problem("corp.example.com.") is not None

    @given(st.dictionaries(st.text(max_size=10), st.integers() | st.text(max_size=5), max_size=15))
    @settings(max_examples=100, deadline=None)
    def test_any_object_is_parsed_or_refused(self, payload: dict[str, Any]) -> None:
        """Arbitrary objects never raise anything but ProtocolError."""
        for parse in (RequestMessage.parse, OutcomeMessage.parse, Heartbeat.parse):
            with pytest.raises(ProtocolError):
                parse(payload)

    def test_initiator_values(self) -> None:
        """The initiators are the two the API accepts."""
        assert {i.value for i in Initiator} == {"self-service", "admin"}
