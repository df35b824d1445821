"""Writeback requests as CloudEvents end to end on the local stack: function_app's Event Grid
trigger, called in this process over a Cloud built from the local app settings
(`bootstrap.build`), → Service Bus (local broker) → relay process → Samba AD DC → signed outcome
→ Completed event, with the audit trail in Azurite. The local Functions host runs beside it for
what the host does here: recording the relay's heartbeats in the agents table. The stack is the
e2e session's (tests/e2e/conftest.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import function_app
from devstack import event_demo, seed
from tests import functions
from tests.e2e.conftest import LocalCloud
from tests.entra import audit_message, stream
from writeback.cloud import http
from writeback.cloud.bootstrap import Cloud, build
from writeback.cloud.settings import DRIFT_FORCE_CHANGE

pytestmark = pytest.mark.timeout(300)
PASSWORD = "Sealed-Grid-Pa55w0rd!"
SOURCE = "/portals/e2e"


@dataclasses.dataclass(frozen=True)
class Captured:
    """What the function set on its Event Grid output binding: what would be published."""

    values: list[str]

    def data(self) -> dict[str, Any]:
        (value,) = self.values
        return dict(json.loads(value)["data"])


@pytest.fixture
def settings(ready: LocalCloud) -> dict[str, str]:
    """The app settings the test's Cloud is built from: the stack's, unless a test changes them."""
    return dict(ready.settings)


@pytest.fixture
async def local(settings: dict[str, str]) -> AsyncIterator[Cloud]:
    """A Cloud for this process, built from `settings` and served by function_app, once the
    relay's heartbeat has reached the agents table."""
    instance = await build(settings)
    http.use(instance)
    try:
        deadline = time.monotonic() + 60
        while True:
            (health,) = await instance.service.relays.health()
            if health.state == "ok":
                break
            assert time.monotonic() < deadline, "no heartbeat from the relay"
            await asyncio.sleep(0.2)
        yield instance
    finally:
        http.use(None)
        await instance.close()


def sealed_reset(instance_keys: dict[str, object], domain: str, upn: str) -> Any:
    """A requested CloudEvent whose password is sealed to the domain's published relay keys and
    bound to the request id derived from the event, as a portal would publish it."""
    return event_demo.sealed_event(instance_keys, domain, upn, PASSWORD, source=SOURCE)


async def deliver(event: dict[str, Any]) -> Captured:
    """One delivered event through the registered trigger, as Azure delivers it."""
    return Captured(await functions.event_grid(function_app.writeback_event, event))


class TestEventsEndToEnd:
    async def test_a_sealed_event_delivered_twice_changes_the_password_once(
        self,
        ready: LocalCloud,
        local: Cloud,
        new_user: Callable[..., seed.Account],
        can_bind: Callable[[seed.Account, str], bool],
        read: Callable[[str, list[str]], dict[str, str]],
    ) -> None:
        """Event Grid delivers the same event twice: the DC's password is set once (pwdLastSet
        does not move on the second delivery), both deliveries answer the same Completed
        event, the audit table holds one request, and no log holds the password."""
        account = new_user("cloudev")
        started = time.time()
        keys = await local.service.encryption_keys(ready.domain)
        event = sealed_reset(keys, ready.domain, account.upn)

        first = await deliver(event)
        assert (first.data()["status"], first.data()["reason"]) == ("applied", "applied")
        assert can_bind(account, PASSWORD)
        assert not can_bind(account, account.password)
        stamp = read(account.dn, ["pwdLastSet"])

        second = await deliver(event)
        assert second.data() == first.data()
        assert read(account.dn, ["pwdLastSet"]) == stamp

        records = await local.service.audit.for_user(account.upn, started - 5, time.time() + 5)
        assert [record.request_id for record in records] == [first.data()["requestId"]]
        (record,) = records
        assert (record.status, record.caller_kind, record.caller, record.sealed_by_caller) == (
            "applied", "event", f"event-grid:{SOURCE}", True,
        )  # fmt: skip
        assert PASSWORD not in ready.log_text()


class TestEventGridWebhook:
    def test_a_sealed_event_through_the_hosts_webhook_is_applied_once(
        self,
        ready: LocalCloud,
        new_user: Callable[..., seed.Account],
        can_bind: Callable[[seed.Account, str], bool],
        read: Callable[[str, list[str]], dict[str, str]],
    ) -> None:
        """Event Grid's delivery, over HTTP to the local host's webhook, twice: both answer
        200 and publish the same Completed event; AD is written once."""
        account = new_user("webhook")
        keys = json.loads(urllib.request.urlopen(urllib.request.Request(  # noqa: S310 - local
            f"{ready.url}/v1/domains/{ready.domain}/keys",
            headers={"x-functions-key": ready.api_key}), timeout=10).read())  # fmt: skip
        event = event_demo.sealed_event(keys, ready.domain, account.upn, PASSWORD)
        host = ready.url.removesuffix("/api")
        published = ready.logs / "published-events.jsonl"
        request_id = event["data"]["requestId"]

        assert event_demo.deliver(host, event) == 202
        assert can_bind(account, PASSWORD)
        stamp = read(account.dn, ["pwdLastSet"])
        assert event_demo.deliver(host, event) == 202
        assert read(account.dn, ["pwdLastSet"]) == stamp
        first, second = event_demo.completed(published, request_id)
        assert first["type"] == "Writeback.PasswordReset.Completed"
        assert (first["data"]["status"], first["data"]["reason"]) == ("applied", "applied")
        assert second["data"] == first["data"]
        assert PASSWORD not in published.read_text()

    def test_the_webhook_validates_and_refuses_like_the_host(self, ready: LocalCloud) -> None:
        """By its aeg-event-type header, as the host's Event Grid extension: the validation
        handshake of both schemas is answered (200), Unsubscribe is 202, no header or an unknown
        one is 400, an unknown function 404, a body that is not events 400; nothing is called."""
        host = ready.url.removesuffix("/api")
        validation = [{
            "id": "v1", "topic": "/t", "subject": "", "eventTime": "2026-01-01T00:00:00Z",
            "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "dataVersion": "1",
            "data": {"validationCode": "code-123"},
        }]  # fmt: skip
        cloud_validation = {
            "specversion": "1.0", "id": "v2", "source": "/t",
            "type": "Microsoft.EventGrid.SubscriptionValidationEvent",
            "data": json.dumps({"validationCode": "code-456"}),
        }  # fmt: skip

        def post(
            body: object, kind: str | None, function: str = "writeback_event"
        ) -> tuple[int, bytes]:
            headers = {"Content-Type": "application/json"}
            if kind is not None:
                headers["aeg-event-type"] = kind
            request = urllib.request.Request(  # noqa: S310 - the local host
                f"{host}/runtime/webhooks/eventgrid?functionName={function}",
                data=json.dumps(body).encode(), method="POST", headers=headers,
            )  # fmt: skip
            try:
                with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                    return response.status, response.read()
            except urllib.error.HTTPError as error:
                return error.code, error.read()

        status, body = post(validation, "SubscriptionValidation")
        assert (status, json.loads(body)) == (200, {"validationResponse": "code-123"})
        status, body = post(cloud_validation, "SubscriptionValidation")
        assert (status, json.loads(body)) == (200, {"validationResponse": "code-456"})
        assert post(validation, "Unsubscribe")[0] == 202
        assert post(validation, None)[0] == 400
        assert post(validation, "Something")[0] == 400
        assert post(validation, "SubscriptionValidation", "no_such_function")[0] == 404
        assert post(validation, "SubscriptionValidation", "WRITEBACK_EVENT")[0] == 404
        assert post("text", "Notification")[0] == 400


class TestAuditStreamOnTheHost:
    async def test_a_batch_fed_to_the_hosts_trigger_records_drift(
        self, ready: LocalCloud, local: Cloud, new_user: Callable[..., seed.Account]
    ) -> None:
        """An Entra audit batch given to the local host's admin API reaches the Event Hubs
        trigger in the host's own process (the worker decodes it): a drift record for the user
        appears in Azurite."""
        account = new_user("hostdrift")
        started = time.time()
        message = audit_message("audit-m365-admin-reset.json", target=account.upn, at=started)
        host = ready.url.removesuffix("/api")
        request = urllib.request.Request(  # noqa: S310 - the local host
            f"{host}/admin/functions/entra_audit", method="POST",
            data=json.dumps({"input": [message.decode()]}).encode(),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - see above
            assert response.status == 202
        records = await local.service.audit.for_user(account.upn, started - 5, time.time() + 5)
        assert [(r.operation, r.reason) for r in records] == [("drift", "password.drift")]


class TestDriftEndToEnd:
    @pytest.fixture
    def settings(self, ready: LocalCloud) -> dict[str, str]:
        return {**ready.settings, DRIFT_FORCE_CHANGE: "true"}

    async def test_a_microsoft_365_reset_forces_a_change_at_next_logon_in_ad(
        self,
        settings: dict[str, str],
        local: Cloud,
        new_user: Callable[..., seed.Account],
        can_bind: Callable[[seed.Account, str], bool],
        read: Callable[[str, list[str]], dict[str, str]],
    ) -> None:
        """With WRITEBACK_DRIFT_FORCE_CHANGE on, a Microsoft 365 admin center reset of an AD user
        (no writeback) gives one drift record in Azurite and one expire through the broker and
        the relay: the Samba DC now requires a new password at next logon. The batch delivered
        again changes nothing more."""
        assert settings[DRIFT_FORCE_CHANGE] == "true"
        account = new_user("drifted")
        started = time.time()
        message = audit_message("audit-m365-admin-reset.json", target=account.upn, at=started)
        await stream(message)
        assert read(account.dn, ["pwdLastSet"]) == {"pwdLastSet": "0"}
        assert not can_bind(account, account.password)

        await stream(message)
        records = await local.service.audit.for_user(account.upn, started - 5, time.time() + 5)
        by_operation = {record.operation: record for record in records}
        assert sorted(by_operation) == ["drift", "expire"]
        assert len(records) == 2
        expire, drifted = by_operation["expire"], by_operation["drift"]
        assert (expire.status, expire.reason, expire.caller) == (
            "applied", "applied", "entra-audit:drift",
        )  # fmt: skip
        assert (drifted.status, drifted.reason) == ("failed", "password.drift")
        assert drifted.detail is not None
        assert drifted.detail.endswith(f"expire request {expire.request_id} (must change at next "
                                       "logon): applied.")  # fmt: skip
