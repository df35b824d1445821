"""Users named by any account reference: routing of each kind and each refusal, through the API
and in `Routes`; and the account index, which finds every request for an account (history, drift)
whichever of its names the request used or the lookup asks for."""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import function_app
from tests import functions
from tests.entra import audit_message, stream
from tests.unit.cloud_stack import DOMAIN, RELAY, SIG_KEY, Stack, call, cloud_stack, request
from writeback import sealing
from writeback.cloud import drift, events
from writeback.cloud.accounts import account_names, name_key
from writeback.cloud.agents import AgentRecord
from writeback.cloud.audit import AuditRecord
from writeback.cloud.relays import NAMES_REFRESH_SECONDS, _announced
from writeback.protocol import Reason
from writeback.protocol.accounts import Account, AccountRef, upn_key
from writeback.protocol.messages import Heartbeat, OutcomeMessage
from writeback.routing import DomainMismatch, DomainNames, DomainRequired, Routes, UnknownDomain
from writeback.transport import OUTCOMES_QUEUE
from writeback.transport.memory import StoredMessage

pytestmark = pytest.mark.timeout(60)
OTHER = "emea.example.test"
DOMAIN_SID = "S-1-5-21-1004336348-1177238915-682003330"
NETBIOS = "CORP"
PASSWORD = "Account-Index-Pa55!"


class TestRoutes:
    routes = Routes.build([DOMAIN, OTHER])
    names = DomainNames(netbios={NETBIOS: DOMAIN}, sids={DOMAIN_SID: DOMAIN})

    def route(self, user: str, domain: str | None = None) -> str:
        return self.routes.route_account(AccountRef.parse(user), self.names, domain)

    def test_each_kind_routes_to_its_domain(self) -> None:
        """A UPN by its suffix, a SID by its domain SID, DOMAIN\\name by its NetBIOS name (any
        case), a GUID by the caller's domain."""
        assert self.route(f"alice@{OTHER}") == OTHER
        assert self.route(f"{DOMAIN_SID}-1104") == DOMAIN
        assert self.route("corp\\alice") == DOMAIN
        assert self.route(str(uuid.uuid4()), OTHER) == OTHER
        assert self.route("4AQlP4lP00GaDAMF6CwzAQ==", DOMAIN) == DOMAIN

    def test_a_guid_goes_to_the_only_domain_and_needs_one_among_several(self) -> None:
        """With one domain a GUID needs no `domain`; with two it is DomainRequired."""
        guid = AccountRef.parse(str(uuid.uuid4()))
        assert Routes.build([DOMAIN]).route_account(guid) == DOMAIN
        with pytest.raises(DomainRequired):
            self.routes.route_account(guid, self.names)

    @pytest.mark.parametrize(
        "user",
        ["alice@elsewhere.test", "S-1-5-21-1-2-3-1104", "S-1-5-32-544", "EMEA\\alice"],
    )
    def test_names_no_domain_claims_are_unknown(self, user: str) -> None:
        """An unrouted UPN suffix, an unannounced domain SID or NetBIOS name: UnknownDomain."""
        with pytest.raises(UnknownDomain):
            self.route(user)

    def test_a_domain_that_is_not_the_names_is_a_mismatch(self) -> None:
        """A caller's `domain` must be the one the user's name belongs to."""
        for user in (f"alice@{DOMAIN}", f"{DOMAIN_SID}-1104", "CORP\\alice"):
            with pytest.raises(DomainMismatch):
                self.route(user, OTHER)


def agent(domain: str, relay: str, seen: float, netbios: str | None, sid: str | None) -> Any:
    return AgentRecord(domain, relay, "t", seen, seen, {}, None, None, netbios, sid)


class TestAnnouncedNames:
    def test_the_newest_announcing_heartbeat_of_each_domain_counts(self) -> None:
        """A domain's NetBIOS name and SID come from its newest heartbeat that names them; a
        relay that names none (an earlier version) changes nothing."""
        names = _announced(
            [
                agent(DOMAIN, "a", 1, "OLD", DOMAIN_SID),
                agent(DOMAIN, "b", 2, NETBIOS, DOMAIN_SID),
                agent(DOMAIN, "c", 3, None, None),
                agent("not.configured.test", "d", 4, "NOPE", "S-1-5-21-9-9-9"),
            ],
            frozenset({DOMAIN, OTHER}),
        )
        assert names == DomainNames(netbios={NETBIOS: DOMAIN}, sids={DOMAIN_SID: DOMAIN})

    def test_a_name_two_domains_claim_routes_to_neither(self) -> None:
        """Two domains announcing one NetBIOS name: it is left out, never a coin toss."""
        names = _announced(
            [agent(DOMAIN, "a", 1, NETBIOS, DOMAIN_SID), agent(OTHER, "b", 1, NETBIOS, None)],
            frozenset({DOMAIN, OTHER}),
        )
        assert names == DomainNames(netbios={}, sids={DOMAIN_SID: DOMAIN})


async def announce(stack: Stack) -> None:
    """A fresh heartbeat of DOMAIN's relay naming its NetBIOS name and SID."""
    now = time.time()
    await stack.agents.record(agent(DOMAIN, RELAY, now, NETBIOS, DOMAIN_SID))


async def submit(body: dict[str, Any], operation: Any = None) -> tuple[int, dict[str, Any]]:
    return await call(operation or function_app.unlock_account, request("POST", "x", body))


class TestApiRouting:
    async def test_each_kind_is_accepted_and_routed(self, tmp_path: Path) -> None:
        """A SID, DOMAIN\\name and a GUID with `domain` are sent to DOMAIN's queue (pending:
        no relay answers), filed under their canonical spelling."""
        async with cloud_stack(tmp_path, wait=0.2, more_domains=[OTHER]) as stack:
            await announce(stack)
            guid = str(uuid.uuid4())
            for user, canonical, extra in [
                (f"s-1-5-21-1004336348-1177238915-682003330-{uuid.uuid4().int % 10**6}", None, {}),
                ("corp\\bob", "CORP\\bob", {}),
                (guid.upper(), guid, {"domain": DOMAIN.upper()}),
            ]:
                status, answer = await submit({"user": user, **extra})
                assert status == 504, answer
                record = stack.audit.records[answer["requestId"]]
                assert (record.domain, record.user) == (DOMAIN, canonical or "S" + user[1:])

    @pytest.mark.parametrize(
        ("body", "error", "field"),
        [
            ({"user": "S-1-5-21-1-2-3-1104"}, "user.unknown_domain", "user"),
            ({"user": "EMEA\\alice"}, "user.unknown_domain", "user"),
            ({"user": "alice@elsewhere.test"}, "user.unknown_domain", "user"),
            ({"user": "3f2504e0-4f89-41d3-9a0c-0305e82c3301"}, "user.domain_required", "domain"),
            ({"user": "3f2504e0-4f89-41d3-9a0c-0305e82c3301", "domain": "x.test"},
             "request.invalid", "domain"),
            ({"user": "alice@corp.example.test", "domain": OTHER}, "request.invalid", "domain"),
            ({"user": "alice", "domain": DOMAIN}, "request.invalid", "user"),
            ({"user": "CORP\\a/b"}, "request.invalid", "user"),
            ({"user": "alice@corp.example.test", "domain": 7}, "request.invalid", "domain"),
            ({"user": "alice@corp.example.test", "domain": "not a domain"}, "request.invalid",
             "domain"),
        ],
    )  # fmt: skip
    async def test_each_refusal_is_a_400_naming_the_field(
        self, tmp_path: Path, body: dict[str, Any], error: str, field: str
    ) -> None:
        """Names no domain claims, a GUID among several domains without `domain`, an unknown
        or contradicting `domain`, and text that names no account: 400, reason and field."""
        async with cloud_stack(tmp_path, wait=0.2, more_domains=[OTHER]) as stack:
            await announce(stack)
            status, answer = await submit(body)
        assert (status, answer["error"], answer["field"]) == (400, error, field), answer
        assert answer["message"]

    async def test_the_parsers_words_name_what_was_expected(self, tmp_path: Path) -> None:
        """Text that is no reference gets the parser's message, which lists the forms."""
        async with cloud_stack(tmp_path):
            status, answer = await submit({"user": "alice"})
        assert (status, answer["field"]) == (400, "user")
        assert "a UPN" in answer["message"]
        assert "SID" in answer["message"]


def answer_with(stack: Stack, request_id: str, account: Account) -> None:
    """The relay's signed `applied` for the request, naming the account it resolved, on the
    request's own session (where a status read looks for it)."""
    outcome = OutcomeMessage(
        request_id, DOMAIN, RELAY, Reason.APPLIED, "ok", "", int(time.time()), 5, account
    )
    body = sealing.sign_outcome(outcome, SIG_KEY)
    stack.broker.send(
        OUTCOMES_QUEUE,
        StoredMessage(body.encode(), session_id=request_id, correlation_id=request_id),
    )


async def resolved(stack: Stack, user: str, account: Account | None) -> str:
    """A reset of `user` sent, then (if `account`) answered by the relay: its request id."""
    body = {"user": user, "newPassword": PASSWORD, "initiator": "admin"}
    status, answer = await submit(body, function_app.reset_password)
    assert status == 504, answer
    request_id = str(answer["requestId"])
    if account is not None:
        answer_with(stack, request_id, account)
        read = request("GET", "x", route_params={"request_id": request_id})
        status, answer = await call(function_app.request_status, read)
        assert answer["status"] == "applied", answer
    return request_id


async def history(user: str) -> list[str]:
    read = request("GET", "x", route_params={"user": user})
    status, answer = await call(function_app.user_history, read)
    assert status == 200, answer
    return sorted(entry["requestId"] for entry in answer["requests"])


def an_account() -> Account:
    tag = uuid.uuid4().hex[:8]
    return Account(
        guid=str(uuid.uuid4()),
        sid=f"{DOMAIN_SID}-{uuid.uuid4().int % 10**6}",
        upn=f"ad{tag}@{DOMAIN}",
        sam_account_name=f"sam{tag}",
    )


class TestAccountIndex:
    async def test_a_request_by_sid_and_one_by_upn_are_both_in_the_history(
        self, tmp_path: Path
    ) -> None:
        """One account reset by SID and by UPN: the history asked by UPN (any case), SID, GUID,
        immutable ID or DOMAIN\\sam shows both, and another account's request neither."""
        async with cloud_stack(tmp_path, wait=0.2) as stack:
            await announce(stack)
            alice, other = an_account(), an_account()
            assert alice.sid
            assert alice.upn
            assert other.sid
            by_sid = await resolved(stack, alice.sid, alice)
            by_upn = await resolved(stack, alice.upn, alice)
            await resolved(stack, other.sid, other)
            both = sorted([by_sid, by_upn])
            immutable = AccountRef.parse(alice.guid).guid_bytes
            assert immutable is not None
            for name in (
                alice.upn, alice.upn.upper(), alice.sid, alice.guid.upper(),
                base64.b64encode(immutable).decode(), f"corp\\{alice.sam_account_name}",
            ):  # fmt: skip
                assert await history(name) == both, name
            assert stack.audit.records[by_sid].account == alice.guid

    async def test_a_request_still_pending_under_its_typed_name_is_found(
        self, tmp_path: Path
    ) -> None:
        """A request by DOMAIN\\sam with no outcome yet is filed under that name only; once
        another request showed the account's names, a lookup by its UPN finds it too."""
        async with cloud_stack(tmp_path, wait=0.2) as stack:
            await announce(stack)
            bob = an_account()
            assert bob.upn
            first = await resolved(stack, bob.upn, bob)
            waiting = await resolved(stack, f"CORP\\{bob.sam_account_name}", None)
            assert stack.audit.records[waiting].status == "pending"
            assert await history(bob.upn) == sorted([first, waiting])
            assert await history(bob.guid) == sorted([first, waiting])

    async def test_records_from_before_the_index_are_still_found(self, tmp_path: Path) -> None:
        """A record written before accounts travelled (a UPN, no account) is found by that UPN,
        and by the account's SID once an outcome linked the two."""
        async with cloud_stack(tmp_path, wait=0.2) as stack:
            await announce(stack)
            carol = an_account()
            assert carol.upn
            assert carol.sid
            old = AuditRecord(
                request_id=str(uuid.uuid4()), received_at=time.time() - 60, domain=DOMAIN,
                user=carol.upn, operation="reset", initiator="admin", caller="api-key",
                caller_kind="api-key", status="applied", reason="applied",
            )  # fmt: skip
            await stack.audit.record(old)
            assert await history(carol.upn.upper()) == [old.request_id]
            assert await history(carol.sid) == []
            new = await resolved(stack, carol.sid, carol)
            assert await history(carol.sid) == sorted([old.request_id, new])

    async def test_history_refuses_text_that_names_no_account(self, tmp_path: Path) -> None:
        """`GET /users/{user}/requests` with no reference: 400 naming `user`."""
        async with cloud_stack(tmp_path):
            read = request("GET", "x", route_params={"user": "nobody"})
            status, answer = await call(function_app.user_history, read)
        assert (status, answer["error"], answer["field"]) == (400, "request.invalid", "user")

    async def test_drift_sees_a_request_made_by_sid(self, tmp_path: Path) -> None:
        """An Entra reset of a UPN matches a writeback reset of the same account by SID: no
        drift; an account with no such request drifts."""
        async with cloud_stack(tmp_path, wait=0.2) as stack:
            await announce(stack)
            dave, erin = an_account(), an_account()
            assert dave.sid
            assert dave.upn
            assert erin.upn
            await resolved(stack, dave.sid, dave)
            await resolved(stack, erin.upn, None)  # pending: filed under its own UPN only
            now = time.time()
            await stream(audit_message("audit-entra-admin-reset.json", target=dave.upn, at=now))
            drifted = [r for r in stack.audit.records.values() if r.operation == drift.DRIFT]
            assert drifted == []
            await stream(
                audit_message("audit-m365-admin-reset.json", target=f"x{erin.upn}", at=now)
            )
            drifted = [r for r in stack.audit.records.values() if r.operation == drift.DRIFT]
            assert [r.user for r in drifted] == [f"x{erin.upn}"]


class TestHeartbeatNames:
    async def test_a_signed_heartbeat_teaches_the_domains_names(self, tmp_path: Path) -> None:
        """A relay's heartbeat naming its NetBIOS name and SID, through the Service Bus trigger:
        a request by SID or DOMAIN\\name that was refused before is routed after (pending, as no
        relay answers), with no restart of the cloud."""
        async with cloud_stack(tmp_path, wait=0.2) as stack:
            user = f"{DOMAIN_SID}-1104"
            status, answer = await submit({"user": user})
            assert (status, answer["error"]) == (400, "user.unknown_domain")
            beat = Heartbeat(
                RELAY, DOMAIN, "t", int(time.time()), {}, None, None, NETBIOS, DOMAIN_SID
            )
            await stack.service.relays.record_heartbeat(sealing.sign_heartbeat(beat, SIG_KEY))
            for named in (user, "CORP\\alice"):
                status, answer = await submit({"user": named})
                assert status == 504, answer
                assert stack.audit.records[answer["requestId"]].domain == DOMAIN

    async def test_names_another_instance_recorded_are_read_again_after_a_while(
        self, tmp_path: Path
    ) -> None:
        """A name this instance does not know re-reads the agents table, at most once per
        NAMES_REFRESH_SECONDS: a heartbeat another instance recorded routes after that."""
        async with cloud_stack(tmp_path, wait=0.2) as stack:
            now = [time.time() - NAMES_REFRESH_SECONDS - 0.5]  # the last read ends at real time
            stack.service.clock = lambda: now[0]
            user = f"{DOMAIN_SID}-1105"
            status, _ = await submit({"user": user})
            assert status == 400
            await announce(stack)  # written to the table, as another instance would
            status, _ = await submit({"user": user})
            assert status == 400  # read under NAMES_REFRESH_SECONDS ago
            now[0] = time.time()
            status, answer = await submit({"user": user})
            assert status == 504, answer


class TestEvents:
    async def test_an_event_names_its_user_by_guid_and_domain(self, tmp_path: Path) -> None:
        """An unlock CloudEvent for a GUID among two domains: refused and audited
        (`user.domain_required`, field `domain`) without `domain`, sent to DOMAIN with it."""
        guid = str(uuid.uuid4())
        async with cloud_stack(tmp_path, wait=0.2, more_domains=[OTHER]) as stack:
            await announce(stack)
            body: dict[str, Any] = {
                "specversion": "1.0", "id": "g1", "source": "/portals/p",
                "type": "Writeback.AccountUnlock.Requested", "data": {"user": guid},
            }  # fmt: skip
            answer = (await functions.event_grid(function_app.writeback_event, body))[0]
            data = json.loads(answer)["data"]
            assert (data["reason"], data["field"]) == ("user.domain_required", "domain")
            refused = stack.audit.records[events.request_id("/portals/p", "g1")]
            assert (refused.status, refused.user) == ("rejected", guid)
            body = {**body, "id": "g2", "data": {"user": guid, "domain": DOMAIN}}
            with pytest.raises(events.OutcomePending):  # sent; no relay answers
                await functions.event_grid(function_app.writeback_event, body)
            sent = stack.audit.records[events.request_id("/portals/p", "g2")]
            assert (sent.domain, sent.user, sent.status) == (DOMAIN, guid, "pending")


class TestNameKey:
    def test_spellings_ad_takes_for_one_name_share_a_key(self) -> None:
        """A UPN keys as before the index (`upn_key`), a SID and a GUID in canonical form, an
        immutable ID as its GUID, DOMAIN\\name with both parts folded; other names differ."""
        guid = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
        assert name_key("ALICE@Corp.Example.Test") == upn_key("alice@corp.example.test")
        assert name_key("s-1-5-21-1-2-3-500") == name_key("S-1-5-21-1-2-3-500")
        assert name_key(guid.upper()) == name_key("4AQlP4lP00GaDAMF6CwzAQ==") == guid
        assert name_key("corp\\ALICE") == name_key("CORP\\alice")
        assert name_key("CORP\\alice") != name_key("EMEA\\alice")
        assert name_key("not a name") == upn_key("not a name")

    def test_an_accounts_names_are_each_listed_once(self) -> None:
        """The typed name, the UPN, the SID and NETBIOS\\sam, without repeats; not the objectGUID,
        which finds the account's records without a link."""
        account = Account("3f2504e0-4f89-41d3-9a0c-0305e82c3301", "S-1-5-21-1-2-3-500",
                          "alice@corp.example.test", "alice")  # fmt: skip
        assert account_names(account, "ALICE@corp.example.test", "CORP") == [
            "ALICE@corp.example.test", "S-1-5-21-1-2-3-500", "CORP\\alice",
        ]  # fmt: skip
        immutable_id = "4AQlP4lP00GaDAMF6CwzAQ=="  # a name the caller typed is always linked
        assert immutable_id in account_names(account, immutable_id, "CORP")
        assert "CORP\\alice" not in account_names(account, "alice@corp.example.test", None)
