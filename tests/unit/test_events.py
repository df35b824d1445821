"""Writeback requests as CloudEvents through function_app's Event Grid trigger, delivered as Azure
delivers them (the worker's indexing and the library's converters, tests.functions), over the
real service and a real relay on in-memory ports; the Completed event is what the function set
on its output binding, encoded by the library."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import function_app
from tests import functions
from tests.unit.cloud_stack import DOMAIN, ENC_KEY, Stack, cloud_stack
from writeback import sealing
from writeback.cloud import events
from writeback.cloud.audit import AuditRecord
from writeback.cloud.telemetry import Telemetry
from writeback.protocol import Operation
from writeback.protocol.messages import RequestMessage, Secrets
from writeback.transport import requests_queue

pytestmark = pytest.mark.timeout(60)
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "entra"
PASSWORD = "Event-Sealed-Pa55word!"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@dataclass(frozen=True)
class Captured:
    """What the function set on its output binding: what the host would publish."""

    values: list[str]

    def event(self) -> dict[str, Any]:
        (value,) = self.values
        return dict(json.loads(value))


def user() -> str:
    return f"ev{uuid.uuid4().hex[:10]}@{DOMAIN}"


def fixture(name: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES / name).read_text()))


def sealed_reset(target: str, *, source: str, event_id: str) -> dict[str, Any]:
    """The published sample reset event, for `target`, with a password sealed to the relay's
    key and bound to the request id derived from the event."""
    body = fixture("cloudevent-reset-requested.json")
    body.update(source=source, id=event_id, subject=f"users/{target}")
    request_id = events.request_id(source, event_id)
    expires = int(time.time()) + 60
    binding = RequestMessage(
        id=request_id, domain=DOMAIN, operation=Operation.RESET, user=target, issued_at=0,
        expires_at=expires,
    ).binding()  # fmt: skip
    keys = sealing.public_keyset({"keys": [ENC_KEY.as_dict(private=False)]}, "jwks")
    body["data"] = {
        "user": target, "initiator": "self-service", "unlock": True, "requestId": request_id,
        "expiresAt": expires, "sealedPassword": sealing.seal(Secrets(PASSWORD), binding, keys),
    }  # fmt: skip
    return body


async def deliver(event: dict[str, Any]) -> Captured:
    """One delivered event (either schema) through the registered trigger, as Azure makes it."""
    return Captured(await functions.event_grid(function_app.writeback_event, event))


def requested(event: dict[str, Any]) -> events.RequestedEvent:
    parsed = events.RequestedEvent.from_json(json.dumps(event))
    assert parsed is not None
    return parsed


def everything_stored(stack: Stack) -> str:
    return "\n".join(repr(record) for record in stack.audit.records.values())


class TestBindings:
    def test_the_trigger_is_declared_as_infra_sets_it(self) -> None:
        """An Event Grid trigger with an identity-based Event Grid output binding (the
        connection prefix `WritebackEvents`, so `WritebackEvents__topicEndpointUri`)."""
        # Built from the function itself: indexing the whole app twice in one process fails.
        function = function_app.writeback_event.build()
        trigger, output = json.loads(function.get_function_json())["bindings"]
        assert trigger == {"direction": "IN", "type": "eventGridTrigger", "name": "event"}
        assert output == {
            "direction": "OUT", "type": "eventGrid", "name": "completed",
            "connection": "WritebackEvents",
        }  # fmt: skip

    def test_every_setting_the_bindings_use_is_in_the_sample(self) -> None:
        """The binding expressions and the identity-based connection prefixes have their
        settings in local.settings.sample.json (the settings test does not see these forms)."""
        root = Path(function_app.__file__).parent
        sample = json.loads((root / "local.settings.sample.json").read_text())["Values"]
        for name in (
            "WRITEBACK_AUDIT_HUB", "WRITEBACK_AUDIT_CONSUMER_GROUP",
            "EntraAuditHub__fullyQualifiedNamespace", "WritebackEvents__topicEndpointUri",
            "WRITEBACK_UNLOCK_ON_ENTRA_SELF_SERVICE", "WRITEBACK_DRIFT_WINDOW_SECONDS",
            "WRITEBACK_DRIFT_FORCE_CHANGE", "WRITEBACK_MICROSOFT_WRITEBACK_DOMAINS",
        ):  # fmt: skip
            assert name in sample, name


class TestRequestedEvents:
    async def test_a_sealed_reset_is_applied_and_answered(self, tmp_path: Path) -> None:
        """A sealed reset event reaches the directory; the Completed event carries the outcome,
        the caller is the event's source, and the trace continues the publisher's."""
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            target, event_id = user(), str(uuid.uuid4())
            body = sealed_reset(target, source="/portals/self-service", event_id=event_id)
            body["traceparent"] = TRACEPARENT
            completed = await deliver(body)
            request_id = events.request_id("/portals/self-service", event_id)
            applied = stack.directory.applied[-1]
            assert (applied.user, applied.new_password) == (target, PASSWORD)  # type: ignore[union-attr]
            answer = completed.event()
            assert answer["type"] == "Writeback.PasswordReset.Completed"
            assert answer["specversion"] == "1.0"
            assert (answer["id"], answer["source"], answer["subject"]) == (
                request_id, "/writeback", target,
            )  # fmt: skip
            assert answer["traceparent"].split("-")[1] == TRACEPARENT.split("-")[1]
            data = answer["data"]
            assert (data["status"], data["reason"], data["operation"]) == (
                "applied", "applied", "reset",
            )  # fmt: skip
            assert (data["requestId"], data["eventId"], data["eventSource"], data["user"]) == (
                request_id, event_id, "/portals/self-service", target,
            )  # fmt: skip
            record = stack.audit.records[request_id]
            assert (record.caller_kind, record.caller, record.source) == (
                "event", "event-grid:/portals/self-service", "event",
            )  # fmt: skip
            assert record.sealed_by_caller
            assert record.unlock
            assert record.trace_id == TRACEPARENT.split("-")[1]

    async def test_a_second_delivery_applies_nothing_and_answers_again(
        self, tmp_path: Path
    ) -> None:
        """Event Grid delivers at least once: the same event again finds its request, writes
        nothing, audits nothing new and publishes the same Completed event."""
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            body = sealed_reset(user(), source="/portals/self-service", event_id="evt-0001")
            first = await deliver(body)
            audited = dict(stack.audit.records)
            second = await deliver(body)
            assert len(stack.directory.applied) == 1
            assert stack.audit.records == audited
            assert first.event()["data"] == second.event()["data"]
            assert first.event()["id"] == second.event()["id"]

    async def test_unlock_and_the_event_grid_schema(self, tmp_path: Path) -> None:
        """An unlock event needs no password; a delivery in the Event Grid schema works too,
        its topic standing for the source."""
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            target = user()
            event = {
                "id": "unlock-1", "data": {"user": target},
                "topic": "/subscriptions/s/topics/portal", "subject": f"users/{target}",
                "eventType": "Writeback.AccountUnlock.Requested", "dataVersion": "1.0",
                "eventTime": datetime.datetime.now(datetime.UTC).isoformat(),
            }  # fmt: skip
            answer = (await deliver(event)).event()
            assert answer["type"] == "Writeback.AccountUnlock.Completed"
            assert answer["data"]["status"] == "applied"
            assert stack.directory.applied[-1].operation is Operation.UNLOCK
            assert answer["id"] == events.request_id("/subscriptions/s/topics/portal", "unlock-1")

    async def test_an_outcome_not_in_yet_is_retried_by_event_grid(self, tmp_path: Path) -> None:
        """No outcome within the wait: the trigger raises (Event Grid redelivers); the
        redelivery sends nothing again and answers once the relay has answered."""
        async with cloud_stack(tmp_path, wait=0.5) as stack:
            await stack.start_relay()
            await stack.stop_relay()  # its heartbeat is fresh, but nobody takes the request
            body = sealed_reset(user(), source="/portals/self-service", event_id="slow-1")
            with pytest.raises(events.OutcomePending):
                await deliver(body)
            await stack.start_relay()
            deadline = time.monotonic() + 10
            while not stack.directory.applied and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            answer = (await deliver(body)).event()
            assert answer["data"]["status"] == "applied"
            assert len(stack.directory.applied) == 1

    async def test_no_relay_alive_is_retried_while_the_request_is_valid(
        self, tmp_path: Path
    ) -> None:
        """No relay alive: nothing is sent and the trigger raises NotSentYet, so Event Grid
        delivers the event again; once a relay is back, that delivery sends the request under
        the same id and it is applied once."""
        async with cloud_stack(tmp_path) as stack:
            body = sealed_reset(user(), source="/portals/self-service", event_id="down-1")
            with pytest.raises(events.NotSentYet):
                await deliver(body)
            rid = events.request_id("/portals/self-service", "down-1")
            assert stack.audit.records[rid].reason == "agent.unavailable"
            assert stack.directory.applied == []
            await stack.start_relay()
            answer = (await deliver(body)).event()
            assert (answer["id"], answer["data"]["status"]) == (rid, "applied")
            assert len(stack.directory.applied) == 1

    async def test_no_relay_alive_is_answered_once_the_request_expired(
        self, tmp_path: Path
    ) -> None:
        """A delivery after the request's expiry: the failure is final and answered as a
        Completed event, never raised, and nothing is sent, even with a relay back by then (a
        request never applies late)."""
        async with cloud_stack(tmp_path) as stack:
            body = sealed_reset(user(), source="/portals/self-service", event_id="down-2")
            with pytest.raises(events.NotSentYet):
                await deliver(body)
            await stack.start_relay()
            late = events.EventHandler(
                stack.service, stack.audit, Telemetry(), clock=lambda: time.time() + 120
            )
            answer = await late.handle(requested(body))
            assert answer is not None
            assert (answer.data["status"], answer.data["reason"]) == (
                "failed", "agent.unavailable",
            )  # fmt: skip
            assert stack.directory.applied == []
            rid = events.request_id("/portals/self-service", "down-2")
            assert stack.audit.records[rid].reason == "agent.unavailable"

    async def test_an_unlock_not_sent_is_not_retried_past_its_lifetime(
        self, tmp_path: Path
    ) -> None:
        """An unlock event has no expiresAt: it is retried only within the request lifetime of
        its first delivery; a later delivery answers the failure and unlocks nothing."""
        async with cloud_stack(tmp_path) as stack:
            target = user()
            event = {
                "id": "unlock-late", "data": {"user": target}, "topic": "/portals/helpdesk",
                "subject": f"users/{target}", "eventType": "Writeback.AccountUnlock.Requested",
                "eventTime": None, "dataVersion": "1.0",
            }  # fmt: skip
            with pytest.raises(events.NotSentYet):
                await deliver(event)
            await stack.start_relay()
            late = events.EventHandler(
                stack.service, stack.audit, Telemetry(), clock=lambda: time.time() + 3600
            )
            answer = await late.handle(requested(event))
            assert answer is not None
            assert answer.data["reason"] == "agent.unavailable"
            assert stack.directory.applied == []


class TestRefusals:
    async def test_a_cleartext_password_is_refused_and_never_stored(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The published cleartext sample is refused: audited as request.invalid without the
        value, answered, never sent, and the value is in no log, record or answer."""
        caplog.set_level(logging.DEBUG)
        body = fixture("cloudevent-reset-cleartext.json")
        secret = body["data"]["newPassword"]
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            completed = await deliver(body)
            again = await deliver(body)
            request_id = events.request_id(body["source"], body["id"])
            record = stack.audit.records[request_id]
            assert (record.status, record.reason) == ("rejected", "request.invalid")
            assert record.detail is not None
            assert "cleartext password in an event" in record.detail
            assert record.user == "adele.vance@corp.example.test"
            assert len(stack.audit.records) == 1
            assert stack.directory.applied == []
            assert stack.broker.stats(requests_queue(DOMAIN))["active"] == 0
            data = completed.event()["data"]
            assert (data["status"], data["field"]) == ("rejected", "newPassword")
            assert again.event()["data"]["status"] == "rejected"
            logged = [repr(vars(entry)) for entry in caplog.records]
            for text in (everything_stored(stack), *logged, *completed.values, *again.values):
                assert secret not in text

    @pytest.mark.parametrize(
        ("data", "field"),
        [
            ("not an object", "data"),
            ({"user": "x@corp.example.test", "oldPassword": "Old-Pa55!"}, "oldPassword"),
            ({"user": "x@corp.example.test", "initiator": "admin"}, "newPassword"),
            ({"user": "x@corp.example.test", "initiator": "admin", "sealedPassword": {
                "recipients": []}, "requestId": "x" * 8, "expiresAt": 1}, "expiresAt"),
        ],
    )  # fmt: skip
    async def test_bad_data_is_refused_naming_the_field(
        self, tmp_path: Path, data: object, field: str
    ) -> None:
        """Each bad body is audited and answered as rejected, naming its field; nothing is
        sent and nothing is raised."""
        async with cloud_stack(tmp_path) as stack:
            body = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "/portals/p",
                    "type": "Writeback.PasswordReset.Requested", "data": data}  # fmt: skip
            answer = (await deliver(body)).event()
            assert (answer["data"]["status"], answer["data"]["field"]) == ("rejected", field)
            (record,) = stack.audit.records.values()
            assert record.status == "rejected"
            assert stack.directory.applied == []

    async def test_a_user_of_no_writeback_domain_is_refused(self, tmp_path: Path) -> None:
        """The service's own refusal (the UPN routes nowhere) is audited and answered too."""
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            body = {"specversion": "1.0", "id": "u1", "source": "/portals/p",
                    "type": "Writeback.AccountUnlock.Requested",
                    "data": {"user": "someone@elsewhere.test"}}  # fmt: skip
            answer = (await deliver(body)).event()
            assert (answer["data"]["reason"], answer["data"]["field"]) == (
                "user.unknown_domain", "user",
            )  # fmt: skip
            record = stack.audit.records[events.request_id("/portals/p", "u1")]
            assert (record.status, record.domain) == ("rejected", "")

    async def test_a_request_id_not_derived_from_the_event_is_refused(self, tmp_path: Path) -> None:
        """A sealed password bound to some other request id cannot ride on this event."""
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            body = sealed_reset(user(), source="/portals/p", event_id="mine")
            body["id"] = "someone-elses"
            answer = (await deliver(body)).event()
            assert (answer["data"]["reason"], answer["data"]["field"]) == (
                "request.invalid", "requestId",
            )  # fmt: skip
            assert stack.directory.applied == []

    async def test_other_events_are_dropped(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Another type, or a spec version we do not read, is logged and dropped: nothing
        audited, nothing published, nothing raised."""
        async with cloud_stack(tmp_path) as stack:
            for kind, version in (("Microsoft.Storage.BlobCreated", "1.0"),
                                  ("Writeback.PasswordReset.Requested", "0.3")):  # fmt: skip
                body = {"specversion": version, "id": "e1", "source": "/s", "type": kind,
                        "data": {}}  # fmt: skip
                assert (await deliver(body)).values == []
            assert stack.audit.records == {}
        assert "event dropped" in caplog.text

    async def test_an_id_taken_by_another_caller_is_not_answered_with_its_outcome(
        self, tmp_path: Path
    ) -> None:
        """If an API caller used the id this event derives to, the event is refused and the
        other request's outcome is not published under it."""
        async with cloud_stack(tmp_path) as stack:
            await stack.start_relay()
            body = sealed_reset(user(), source="/portals/p", event_id="taken")
            request_id = body["data"]["requestId"]
            stack.audit.records[request_id] = AuditRecord(
                request_id=request_id, received_at=time.time(), domain=DOMAIN,
                user=f"other@{DOMAIN}", operation="reset", initiator="admin",
                caller="api-key:abc", caller_kind="api-key", status="applied", reason="applied",
            )  # fmt: skip
            answer = (await deliver(body)).event()
            assert (answer["data"]["status"], answer["data"]["user"]) == ("rejected", None)
            assert stack.directory.applied == []
